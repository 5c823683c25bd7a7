//! Daemon startup, signals, systemd notify, named tasks and shutdown.
//!
//! Order at startup: install the FIPS TLS provider, parse arguments and the
//! config, harden the process, check FIPS mode, load TLS, bind every listener,
//! then (and only then) tell systemd `READY=1`.

pub mod cli;
mod dev;
mod files;
mod metrics;
pub mod notify;
mod services;

use services::Services;

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin;
use crate::clock::SystemClock;
use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH};
use crate::crypto::fips::ModuleInfo;
use crate::crypto::keyring::{KeyError, MasterKey};
use crate::crypto::{self, CryptoError};
use crate::firms::{FirmError, Lifecycle, Pool};
use crate::runtime::Runtime;
use crate::tls::{self, CertStore, TlsError};

/// Why the daemon refused to start. Every variant exits 78 (EX_CONFIG).
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("refusing to start: {0}")]
    Fips(#[from] CryptoError),
    #[error("refusing to start: {0}")]
    Tls(#[from] TlsError),
    #[error(
        "refusing to run as root: run as the strongroom user, or set security.allow_root = true"
    )]
    Root,
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot bind the API listener on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Admin(#[from] admin::server::BindError),
    #[error("refusing to start: {0}")]
    Key(#[from] KeyError),
    #[error("refusing to start: cannot open the registry: {0}")]
    Firms(#[from] FirmError),
}

/// Entry point of `strongroomd`.
pub fn main() -> ExitCode {
    // First thing: the only TLS provider in the process is the FIPS one.
    let _ = rustls::crypto::CryptoProvider::install_default(tls::provider());

    let args = cli::Args::parse();
    let (config, config_path) = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            crate::telemetry::init(
                args.log_target.unwrap_or_default(),
                "info",
                args.check_config,
            );
            tracing::error!(error = %e, "refusing to start: {e}");
            return ExitCode::from(crate::EXIT_CONFIG);
        }
    };
    crate::telemetry::init(config.log.target, &config.log.level, args.check_config);

    let prepared = match prepare(&args, config) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "{e}");
            return ExitCode::from(crate::EXIT_CONFIG);
        }
    };
    if args.check_config {
        tracing::info!("configuration OK");
        return ExitCode::SUCCESS;
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("strongroomd")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(prepared, config_path, args.dev));
    // Every request's access-log line is written before exit.
    crate::telemetry::access::flush();
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "{e}");
            ExitCode::from(crate::EXIT_CONFIG)
        }
    }
}

fn load_config(args: &cli::Args) -> Result<(Config, Option<PathBuf>), ConfigError> {
    let path = match (&args.config, args.dev) {
        (Some(p), _) => Some(p.clone()),
        (None, true) => None,
        (None, false) => Some(PathBuf::from(DEFAULT_CONFIG_PATH)),
    };
    let mut config = match &path {
        Some(p) => Config::load(p)?,
        None => Config::defaults(),
    };
    if let Some(dir) = &args.state_dir {
        config.storage.state_dir = absolute(dir);
    }
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(target) = args.log_target {
        config.log.target = target;
    }
    if args.dev {
        let dir = config.storage.state_dir.clone();
        config.admin.socket = dir.join("admin.sock");
        if config.keys.master_key_file.is_none() {
            config.keys.master_key_file = Some(dir.join("master.key"));
        }
    }
    config.validate()?;
    Ok((config, path))
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_owned())
    }
}

/// Everything checked and loaded before the runtime starts.
struct Prepared {
    config: Config,
    module: ModuleInfo,
    certs: Arc<CertStore>,
    server_config: Arc<rustls::ServerConfig>,
    /// Webhook deliveries' TLS client (checked at startup: a bad CA file
    /// refuses to start).
    webhook_tls: rustls::ClientConfig,
    services: Option<Services>,
    key_source: String,
}

/// The real startup checks; `--check-config` stops after these.
fn prepare(args: &cli::Args, config: Config) -> Result<Prepared, StartupError> {
    harden_process();
    // Security invariant: never run as root in production unless explicitly allowed.
    // (--check-config is often run with sudo before a reload: it checks the file, not the caller.)
    if nix::unistd::geteuid().is_root()
        && !args.dev
        && !args.check_config
        && !config.security.allow_root
    {
        return Err(StartupError::Root);
    }
    let module = crypto::fips::require_fips_mode()?;

    if args.dev && !args.check_config {
        dev::prepare_state(&config)?;
    }
    let (cert_path, key_path) = config.tls_paths();
    if config.tls_is_generated() && !args.check_config {
        ensure_dir(&config.storage.state_dir)?;
        if let Some(fp) = tls::ensure_self_signed(&cert_path, &key_path)? {
            tracing::info!(
                cert = %cert_path.display(),
                fingerprint_sha256 = %fp,
                "generated a self-signed TLS certificate; pin this fingerprint in clients or install a real certificate"
            );
        }
    }
    let provider = Arc::new(tls::provider());
    let certs = if config.tls_is_generated() && args.check_config && !cert_path.exists() {
        // Nothing to check yet: the certificate is generated on first start.
        None
    } else {
        Some(Arc::new(CertStore::load(
            provider.clone(),
            &cert_path,
            &key_path,
        )?))
    };
    let certs = match certs {
        Some(c) => c,
        None => {
            // Prove the TLS configuration is FIPS with a throwaway certificate.
            let dir = tempdir_for_check()?;
            let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
            tls::ensure_self_signed(&c, &k)?;
            let store = Arc::new(CertStore::load(provider.clone(), &c, &k)?);
            let _ = fs::remove_dir_all(&dir);
            store
        }
    };
    let server_config = Arc::new(tls::server_config(provider, certs.clone())?);
    let webhook_tls = tls::client_config(config.webhooks.ca_file.as_deref())?;
    let (services, key_source) = open_firms(&config, args.check_config)?;
    Ok(Prepared {
        config,
        module,
        certs,
        server_config,
        webhook_tls,
        services,
        key_source,
    })
}

/// Loads the master key and opens the registry with it. Missing, malformed or
/// wrong key: an error (exit 78), never a fallback.
fn open_firms(
    config: &Config,
    check_only: bool,
) -> Result<(Option<Services>, String), StartupError> {
    let key_file = config.keys.master_key_file.as_deref();
    if check_only && std::env::var_os("CREDENTIALS_DIRECTORY").is_none() && key_file.is_none() {
        tracing::info!(
            "master key not checked: it comes from the systemd credential at service start"
        );
        return Ok((None, String::new()));
    }
    let (master, source) = MasterKey::load(key_file)?;
    let registry = config.storage.state_dir.join("registry.db");
    if check_only {
        if registry.exists() {
            crate::store::registry::Registry::check_key(
                &registry,
                &master.derive()?.registry_db_key(),
            )
            .map_err(FirmError::from)?;
        }
        tracing::info!(source = %source, "master key OK");
        return Ok((None, source.to_string()));
    }
    ensure_dir(&config.storage.state_dir)?;
    crate::store::space::watch(config.storage.state_dir.clone());
    let clock = Arc::new(SystemClock::new());
    let (pool, appliance) = Pool::open(
        &config.storage.state_dir,
        &master,
        clock.clone(),
        Duration::from_secs(config.storage.firm_idle_secs),
    )?;
    drop(master);
    let services = Services::new(clock, pool, appliance, config);
    // Before anything is served: finish erasures a crash interrupted.
    services.erasures.resume();
    tracing::info!(source = %source, "master key loaded; registry open");
    Ok((Some(services), source.to_string()))
}

fn tempdir_for_check() -> Result<PathBuf, StartupError> {
    let name: [u8; 8] = crypto::random_array()?;
    let dir = std::env::temp_dir().join(format!("strongroom-check-{}", crypto::hex(&name)));
    ensure_dir(&dir)?;
    Ok(dir)
}

/// Process hardening that needs no privileges.
fn harden_process() {
    // Security invariant: no core dumps and no ptrace by other users of this uid,
    // so key material in memory never lands on disk or in another process.
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "cannot clear the dumpable flag");
    }
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
    // Files we create are private to the service user unless we say otherwise.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

pub(super) fn ensure_dir(dir: &Path) -> Result<(), StartupError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StartupError::Io {
            path: dir.to_owned(),
            source,
        })
}

/// A task with a name, so shutdown can say which one misbehaved.
struct NamedTask {
    name: &'static str,
    handle: JoinHandle<()>,
}

async fn run(p: Prepared, config_path: Option<PathBuf>, dev: bool) -> Result<(), StartupError> {
    let listen = p.config.server.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| StartupError::Bind {
            addr: listen,
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| StartupError::Bind {
        addr: listen,
        source,
    })?;
    let metrics_listener = metrics::bind(&p.config, dev).await?;
    let metrics_bound = match &metrics_listener {
        Some(l) => Some(l.local_addr().map_err(|source| StartupError::Io {
            path: PathBuf::from("metrics listener"),
            source,
        })?),
        None => None,
    };
    let policy = admin::server::AccessPolicy::new(&p.config.admin.group);
    let admin_path = p.config.admin.socket.clone();
    let admin_listener = admin::server::bind(&admin_path, &policy)?;

    let svc = p.services.ok_or_else(|| StartupError::Io {
        path: PathBuf::from("registry"),
        source: std::io::Error::other("registry not opened"),
    })?;
    let config = p.config;
    let runtime = Arc::new(Runtime {
        // clock: uptime is real elapsed time.
        #[allow(clippy::disallowed_methods)]
        started: Instant::now(), // clock: uptime, real time
        module: p.module,
        listen: bound,
        metrics_listen: metrics_bound,
        state_dir: config.storage.state_dir.clone(),
        certs: p.certs.clone(),
        dev,
        key_source: p.key_source,
    });
    let app = Arc::new(crate::http::AppState {
        runtime: runtime.clone(),
        lifecycle: svc.lifecycle.clone(),
        keys: svc.keys.clone(),
        people: svc.people.clone(),
        limits: svc.limits.clone(),
        records: svc.records.clone(),
        evidence: svc.evidence.clone(),
        erasures: svc.erasures.clone(),
        vault: svc.vault.clone(),
        webhooks: svc.webhooks.clone(),
        audit: svc.audit.clone(),
        trail: svc.trail.clone(),
        max_body_bytes: config.server.max_body_bytes,
    });
    let admin_state = Arc::new(admin::AdminState {
        runtime: runtime.clone(),
        lifecycle: svc.lifecycle.clone(),
        people: svc.people.clone(),
        limits: svc.limits.clone(),
        audit: svc.audit.clone(),
        trail: svc.trail.clone(),
        backups: svc.backups.clone(),
        records: svc.records.clone(),
        evidence: svc.evidence.clone(),
        idle_timeout: Duration::from_secs(config.admin.idle_timeout_secs),
        clock: svc.clock.clone(),
    });
    let drain = Duration::from_secs(config.server.shutdown_timeout_secs);
    let (stop_tx, stop_rx) = watch::channel(false);
    let acceptor = tokio_rustls::TlsAcceptor::from(p.server_config);
    let metrics_task = match metrics_listener {
        Some(l) => Some(metrics::task(
            &config, &runtime, &svc, &acceptor, l, &stop_rx,
        )?),
        None => None,
    };
    let router = crate::http::router(app);
    let nofile = files::raise_open_file_limit();
    if nofile.is_some_and(|n| n < 16_384) {
        tracing::warn!(
            open_file_limit = nofile.unwrap_or(0),
            "the open-file limit is low: raise LimitNOFILE (many warm firms and connections need files)"
        );
    }
    let limits = crate::http::conn::Limits::new(&config.server, nofile);
    if limits.max_total < config.server.max_connections {
        tracing::warn!(
            configured = config.server.max_connections,
            open_file_limit = nofile.unwrap_or(0),
            max_connections = limits.max_total,
            "connection cap lowered to fit the open-file limit"
        );
    }
    let tracker = crate::http::conn::Tracker::new(limits);

    let mut tasks = vec![
        NamedTask {
            name: "https",
            handle: tokio::spawn(crate::http::server::serve(
                listener,
                acceptor,
                router,
                tracker,
                stop_rx.clone(),
                drain,
            )),
        },
        NamedTask {
            name: "admin",
            handle: tokio::spawn(admin::server::serve(
                admin_listener,
                admin_state,
                policy,
                stop_rx.clone(),
            )),
        },
    ];
    if let Some(t) = metrics_task {
        tasks.push(t);
    }
    // Webhook deliveries: the outbox of every firm with endpoints, in
    // order per endpoint, over the FIPS TLS client.
    tasks.push(NamedTask {
        name: "webhook-delivery",
        handle: tokio::spawn(svc.webhooks.clone().run(
            Arc::new(crate::http::outbound::WebhookClient::new(p.webhook_tls)),
            stop_rx.clone(),
        )),
    });
    // Idle firm databases close after `firm_idle_secs`.
    tasks.push(periodic(
        "firm-reaper",
        Duration::from_secs((config.storage.firm_idle_secs / 2).clamp(1, 30)),
        &stop_rx,
        &svc.lifecycle,
        |l| {
            let n = l.reap_idle();
            if n > 0 {
                tracing::debug!(closed = n, "closed idle firm databases");
            }
        },
    ));
    // Audit checkpoints: at least once a second while a log grows.
    tasks.push(periodic(
        "checkpoint-signer",
        Duration::from_secs(1),
        &stop_rx,
        &svc.audit,
        |a| {
            a.sign_pending_checkpoints();
        },
    ));
    // Audit retention: purge what is older than each log's retention, with a
    // signed receipt (at start, then every purge_interval).
    tasks.push(periodic(
        "audit-retention",
        config.audit.purge_interval(),
        &stop_rx,
        &svc.audit,
        |a| {
            a.purge_expired();
        },
    ));
    // Record retention: delete what outlived its collection's class.
    tasks.push(periodic(
        "record-retention",
        config.retention.interval(),
        &stop_rx,
        &svc.records,
        |r| {
            r.purge_expired();
        },
    ));
    // Failed-authentication summaries, once their window has closed.
    tasks.push(periodic(
        "auth-failure-summaries",
        Duration::from_secs(5),
        &stop_rx,
        &svc.keys,
        |k| k.flush_auth_failures(false),
    ));
    // Rate-limit buckets that are full again are dropped: memory follows
    // the sources active lately, not every source ever seen.
    tasks.push(periodic(
        "rate-limit-sweep",
        Duration::from_secs(5),
        &stop_rx,
        &svc.limits,
        crate::limits::Limits::sweep,
    ));
    tasks.push(periodic(
        "sign-in-failure-summaries",
        Duration::from_secs(5),
        &stop_rx,
        &svc.people,
        |p| p.flush_signin_failures(false),
    ));
    // Data-key re-encryption: resumes unfinished jobs at start (after a
    // restart or a failure), then checks every minute.
    tasks.push(periodic(
        "data-key-reencryption",
        Duration::from_secs(60),
        &stop_rx,
        &svc.lifecycle,
        Lifecycle::resume_reencryption,
    ));
    if let Some(interval) = notify::watchdog_interval() {
        let mut stop = stop_rx.clone();
        tasks.push(NamedTask {
            name: "watchdog",
            handle: tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval / 2);
                loop {
                    tokio::select! {
                        _ = stop.changed() => break,
                        _ = tick.tick() => notify::watchdog(),
                    }
                }
            }),
        });
    }

    let mut sigterm = signal(SignalKind::terminate()).map_err(sig_err)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(sig_err)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(sig_err)?;

    let status_line = format!(
        "serving https://{bound}; admin socket {}",
        admin_path.display()
    );
    tracing::info!(
        listen = %bound,
        admin_socket = %admin_path.display(),
        fips = runtime.module.fips,
        crypto_module = %runtime.module.module,
        "strongroomd ready"
    );
    if dev {
        dev::print_banner(&runtime, &admin_path);
    }
    // Every listener is bound: only now is the service ready.
    notify::ready(&status_line);

    loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = sighup.recv() => {
                notify::reloading();
                reload(&runtime, config_path.as_deref());
                notify::ready(&status_line);
            }
        }
    }

    notify::stopping();
    let _ = stop_tx.send(true);
    svc.lifecycle.stop_jobs();
    for task in tasks {
        match tokio::time::timeout(drain + Duration::from_secs(2), task.handle).await {
            Ok(Ok(())) => tracing::debug!(task = task.name, "task stopped"),
            Ok(Err(e)) => tracing::error!(task = task.name, error = %e, "task failed"),
            Err(_) => tracing::error!(task = task.name, "task did not stop in time"),
        }
    }
    let _ = fs::remove_file(&admin_path);
    // Every queued write finishes and every database closes before exit;
    // failures still being counted get their summary entry first.
    let _ = tokio::task::spawn_blocking(move || {
        svc.keys.flush_auth_failures(true);
        svc.people.flush_signin_failures(true);
        svc.lifecycle.close_all()
    })
    .await;
    Ok(())
}

/// A named task running blocking `job` at start, then every `every` (a late
/// run delays the next), until the stop signal.
fn periodic<S: Send + Sync + 'static>(
    name: &'static str,
    every: Duration,
    stop: &tokio::sync::watch::Receiver<bool>,
    service: &Arc<S>,
    job: fn(&S),
) -> NamedTask {
    let (mut stop, firms) = (stop.clone(), service.clone());
    NamedTask {
        name,
        handle: tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tick.tick() => {
                        let f = firms.clone();
                        let _ = tokio::task::spawn_blocking(move || job(&f)).await;
                    }
                }
            }
        }),
    }
}

fn sig_err(source: std::io::Error) -> StartupError {
    StartupError::Io {
        path: PathBuf::from("<signal handler>"),
        source,
    }
}

/// SIGHUP: re-read the certificate and key; re-check the config file. A bad
/// certificate or config is logged and the running one stays in use.
fn reload(runtime: &Runtime, config_path: Option<&Path>) {
    if let Some(path) = config_path {
        match Config::load(path) {
            Ok(_) => {
                tracing::info!(config = %path.display(), "config re-checked; settings other than the TLS certificate apply at restart")
            }
            Err(e) => {
                tracing::error!(error = %e, "config reload: {e}; keeping the running configuration")
            }
        }
    }
    match runtime.certs.reload() {
        Ok(fp) => tracing::info!(fingerprint_sha256 = %fp, "TLS certificate reloaded"),
        Err(e) => {
            tracing::error!(error = %e, "TLS reload failed: {e}; keeping the current certificate")
        }
    }
}

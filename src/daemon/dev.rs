//! Dev mode (`strongroomd --dev`): a state directory that makes itself,
//! and a banner that says what to run next.

use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::{StartupError, ensure_dir};
use crate::config::Config;
use crate::crypto;
use crate::runtime::Runtime;

/// Dev mode: the state directory with a master key file (0600) in it.
pub(super) fn prepare_state(config: &Config) -> Result<(), StartupError> {
    let dir = &config.storage.state_dir;
    ensure_dir(dir)?;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Some(path) = &config.keys.master_key_file {
        if !path.exists() {
            let key = zeroize::Zeroizing::new(crypto::random_array::<32>()?);
            let hex = zeroize::Zeroizing::new(crypto::hex(key.as_ref()) + "\n");
            let io = |source| StartupError::Io {
                path: path.clone(),
                source,
            };
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io)?;
            std::io::Write::write_all(&mut f, hex.as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
            tracing::info!(path = %path.display(), "dev mode: created a master key file");
        }
    }
    Ok(())
}

/// What to run next, printed once the daemon is ready.
pub(super) fn print_banner(runtime: &Runtime, admin_path: &Path) {
    let dir = runtime.state_dir.display();
    let port = runtime.listen.port();
    println!(
        "\nStrongroom is running in dev mode (FIPS: {}).\n\
         \n  API:           https://{listen}/status\n\
         \x20 certificate:   {dir}/tls/cert.pem (SHA-256 {fp})\n\
         \x20 admin socket:  {admin}\n\
         \nNext:\n\
         \x20 curl --cacert {dir}/tls/cert.pem https://localhost:{port}/status\n\
         \x20 strongroomctl --socket {admin} status\n",
        runtime.module.module,
        listen = runtime.listen,
        fp = runtime.certs.fingerprint(),
        admin = admin_path.display(),
    );
}

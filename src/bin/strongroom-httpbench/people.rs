//! People workloads: a firm's users are invited and enrolled over the API
//! (password only: the firm's MFA policy is `optional` here, since the
//! benchmark measures sessions and password hashing, not TOTP), then:
//! - a session token's GETs (in `main`, against the API key's);
//! - a sign-in's cost: latency and server CPU, sequentially;
//! - wrong-password against unknown-name sign-ins, interleaved: the two
//!   must take the same time (no existence oracle in the timing).

use std::time::{Duration, Instant};

use super::{BenchFirm, BoxError, Conn, Daemon, clock_ticks_per_sec, cpu_ticks, tls};

const PASSWORD: &str = "bench passphrase 4 people";

fn request(method: &str, path: &str, token: Option<&str>, body: &str) -> Vec<u8> {
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn json(c: &mut Conn, req: Vec<u8>, want: u16) -> Result<serde_json::Value, BoxError> {
    let (s, body) = c.exchange(&req).await?;
    if s != want {
        return Err(format!("{s}: {}", String::from_utf8_lossy(&body)).into());
    }
    Ok(if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body)?
    })
}

/// Invites and enrols `n` viewers of `f`; their logins.
pub(super) fn setup(
    d: &Daemon,
    rt: &tokio::runtime::Runtime,
    f: &BenchFirm,
    n: usize,
) -> Result<Vec<String>, BoxError> {
    let tls = tls(&d.state.join("tls/cert.pem"))?;
    rt.block_on(async {
        let mut c = Conn::open(&tls, d.addr).await?;
        let firm = format!("/api/v1/firms/{}", f.id);
        json(
            &mut c,
            request(
                "PATCH",
                &firm,
                Some(&f.token),
                r#"{"mfa_policy":"optional"}"#,
            ),
            200,
        )
        .await?;
        let mut logins = Vec::with_capacity(n);
        for i in 0..n {
            let login = format!("person{i}@bench.test");
            let role = if i == 0 { "owner" } else { "viewer" };
            let body = format!(r#"{{"login":"{login}","display_name":"P {i}","role":"{role}"}}"#);
            let v = json(
                &mut c,
                request(
                    "POST",
                    &format!("/api/v1/users/{}", f.id),
                    Some(&f.token),
                    &body,
                ),
                201,
            )
            .await?;
            let token = v["enrolment_token"].as_str().ok_or("no token")?.to_owned();
            let body = format!(r#"{{"token":"{token}","password":"{PASSWORD}"}}"#);
            json(
                &mut c,
                request("POST", &format!("/api/v1/enrolment/{}", f.id), None, &body),
                200,
            )
            .await?;
            let body = format!(r#"{{"token":"{token}"}}"#);
            json(
                &mut c,
                request(
                    "POST",
                    &format!("/api/v1/enrolment/{}/confirm", f.id),
                    None,
                    &body,
                ),
                200,
            )
            .await?;
            logins.push(login);
        }
        Ok(logins)
    })
}

/// A session token for `login`.
pub(super) fn sign_in(
    d: &Daemon,
    rt: &tokio::runtime::Runtime,
    f: &BenchFirm,
    login: &str,
) -> Result<String, BoxError> {
    let tls = tls(&d.state.join("tls/cert.pem"))?;
    rt.block_on(async {
        let mut c = Conn::open(&tls, d.addr).await?;
        let body = format!(r#"{{"login":"{login}","password":"{PASSWORD}"}}"#);
        let v = json(
            &mut c,
            request("POST", &format!("/api/v1/sessions/{}", f.id), None, &body),
            201,
        )
        .await?;
        Ok(v["token"].as_str().ok_or("no session token")?.to_owned())
    })
}

fn summary(name: &str, lat: &mut [Duration]) -> Duration {
    lat.sort_unstable();
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    let mean = lat.iter().sum::<Duration>() / lat.len() as u32;
    println!(
        "{name:<44} n={:<4} p10 {:>7.2} ms  p50 {:>7.2} ms  mean {:>7.2} ms  p90 {:>7.2} ms",
        lat.len(),
        p(0.10).as_secs_f64() * 1e3,
        p(0.50).as_secs_f64() * 1e3,
        mean.as_secs_f64() * 1e3,
        p(0.90).as_secs_f64() * 1e3
    );
    p(0.50)
}

async fn time(c: &mut Conn, req: Vec<u8>, want: u16) -> Result<Duration, BoxError> {
    let t0 = Instant::now(); // clock: benchmark timing
    let (s, body) = c.exchange(&req).await?;
    if s != want {
        return Err(format!("{s}: {}", String::from_utf8_lossy(&body)).into());
    }
    Ok(t0.elapsed())
}

/// Sign-in cost, and wrong-password against unknown-name timing.
pub(super) fn sign_in_costs(
    d: &Daemon,
    rt: &tokio::runtime::Runtime,
    f: &BenchFirm,
    logins: &[String],
) -> Result<(), BoxError> {
    let tls = tls(&d.state.join("tls/cert.pem"))?;
    let path = format!("/api/v1/sessions/{}", f.id);
    let pid = [d.pid()];
    rt.block_on(async {
        let mut c = Conn::open(&tls, d.addr).await?;
        // A sign-in that succeeds: PBKDF2 (600,000 iterations) and a durable write.
        let body = |login: &str, pw: &str| format!(r#"{{"login":"{login}","password":"{pw}"}}"#);
        let cpu0 = cpu_ticks(&pid);
        let mut ok = Vec::new();
        for i in 0..40 {
            ok.push(
                time(
                    &mut c,
                    request(
                        "POST",
                        &path,
                        None,
                        &body(&logins[i % logins.len()], PASSWORD),
                    ),
                    201,
                )
                .await?,
            );
        }
        let cpu = (cpu_ticks(&pid) - cpu0) as f64 / clock_ticks_per_sec() / ok.len() as f64;
        println!();
        summary("sign-in (correct password), sequential", &mut ok);
        println!("{:<44} server CPU {:.1} ms per sign-in", "", cpu * 1e3);
        // Interleaved, so both see the same machine: a wrong password for a
        // real account (at most 7 per account: the 8th would lock it) and a
        // name that does not exist.
        let mut wrong = Vec::new();
        let mut unknown = Vec::new();
        for round in 0..7 {
            for (i, login) in logins.iter().enumerate() {
                wrong.push(
                    time(
                        &mut c,
                        request("POST", &path, None, &body(login, "not the password, sorry")),
                        401,
                    )
                    .await?,
                );
                let ghost = format!("ghost{round}-{i}@bench.test");
                unknown.push(
                    time(
                        &mut c,
                        request(
                            "POST",
                            &path,
                            None,
                            &body(&ghost, "not the password, sorry"),
                        ),
                        401,
                    )
                    .await?,
                );
            }
        }
        let w = summary("sign-in, wrong password (real account)", &mut wrong);
        let u = summary("sign-in, unknown login name", &mut unknown);
        let diff = w.as_secs_f64() - u.as_secs_f64();
        println!(
            "{:<44} medians differ by {:+.2} ms ({:+.1}%)",
            "",
            diff * 1e3,
            100.0 * diff / u.as_secs_f64()
        );
        Ok(())
    })
}

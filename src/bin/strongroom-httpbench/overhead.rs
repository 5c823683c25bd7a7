//! The cost of rate limiting and metrics: two daemons, one with both on
//! (the defaults) and one with both off, driven alternately with the same
//! GET and create workloads for a few rounds; the median ratio of each is
//! printed, with every round's figures.

use std::sync::Arc;

use super::servers::Daemon;
use super::{Args, BoxError, Outcome, Workload, get_request, measure, post_request};

pub(super) fn run(
    args: &Args,
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    results: &mut Vec<Outcome>,
) -> Result<(), BoxError> {
    let mut on = Daemon::start(&dir.join("limits-on"), "")?;
    let mut off = Daemon::start(
        &dir.join("limits-off"),
        "[limits]\nenabled = false\n[metrics]\nenabled = false\n",
    )?;
    let workloads = |d: &Daemon, label: &str| -> Result<(Workload, Workload), BoxError> {
        let f = d.setup_firms(rt, 1)?.remove(0);
        let get = Workload {
            name: format!("GET, limits+metrics {label}"),
            addr: d.addr,
            requests: Arc::new(vec![get_request(
                &format!("/api/v1/records/{}/clients/{}", f.id, f.record),
                Some(&f.token),
            )]),
            expect: 200,
        };
        let create = Workload {
            name: format!("create, limits+metrics {label}"),
            addr: d.addr,
            requests: Arc::new(
                (0..64)
                    .map(|n| {
                        post_request(
                            &format!("/api/v1/records/{}/clients", f.id),
                            &f.token,
                            &format!(r#"{{"name":"Client {n}","ssn":"219-09-9999","visits":3}}"#),
                        )
                    })
                    .collect(),
            ),
            expect: 201,
        };
        Ok((get, create))
    };
    let (get_on, create_on) = workloads(&on, "on")?;
    let (get_off, create_off) = workloads(&off, "off")?;
    let cert_on = on.state.join("tls/cert.pem");
    let cert_off = off.state.join("tls/cert.pem");
    let (mut gets, mut creates) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds.max(1) {
        for (w_on, w_off, ratios) in [
            (&get_on, &get_off, &mut gets),
            (&create_on, &create_off, &mut creates),
        ] {
            let a = rt.block_on(measure(args, w_on, &cert_on, &[on.pid()]))?;
            let b = rt.block_on(measure(args, w_off, &cert_off, &[off.pid()]))?;
            ratios.push(a.rps / b.rps);
            results.push(a);
            results.push(b);
        }
    }
    on.stop();
    off.stop();
    for (what, ratios) in [("GETs", &mut gets), ("creates", &mut creates)] {
        ratios.sort_by(f64::total_cmp);
        println!(
            "{what} with rate limits and metrics on: {:.1}% of the same with them off (median of {} alternating rounds; target >= 95%)",
            100.0 * ratios[ratios.len() / 2],
            ratios.len()
        );
    }
    Ok(())
}

//! How many sockets this machine can hold: the open-file limits of the load generator
//! and the server, and the ephemeral ports per source address or destination.

use anyhow::bail;

use crate::{
    cli::FanoutArgs,
    report::Report,
    util::{open_file_limits, thousands},
};

/// File descriptors kept aside for everything but the sockets.
const FD_RESERVE: u64 = 200;

/// The largest subscriber count the open-file and port limits allow, and why.
fn capacity(args: &FanoutArgs, urls: usize, sources: usize) -> anyhow::Result<(u64, Vec<String>)> {
    let mut why = Vec::new();
    let mut cap = u64::MAX;
    let (own, own_hard) = open_file_limits(None)?;
    let own_cap = own.saturating_sub(FD_RESERVE);
    why.push(format!(
        "load generator: open-file limit {} (hard {}) -> at most {} sockets",
        thousands(own),
        thousands(own_hard),
        thousands(own_cap)
    ));
    cap = cap.min(own_cap);
    if let Some(pid) = args.common.server_pid {
        let (srv, srv_hard) = open_file_limits(Some(pid))?;
        // The pid is one node; the sockets are spread evenly over the URLs.
        let srv_cap = srv.saturating_sub(FD_RESERVE).saturating_mul(urls as u64);
        why.push(format!(
            "server pid {pid}: open-file limit {} (hard {}) -> at most {} sockets over {urls} node(s)",
            thousands(srv),
            thousands(srv_hard),
            thousands(srv_cap)
        ));
        cap = cap.min(srv_cap);
    }
    if let Ok(range) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") {
        let v: Vec<u64> = range
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [lo, hi] = v.as_slice() {
            let ports = hi.saturating_sub(*lo) + 1;
            // Bound sockets take a port per source address; unbound ones per destination.
            let port_cap = ports.saturating_mul(if sources > 0 { sources } else { urls } as u64);
            why.push(format!(
                "ephemeral ports {lo}-{hi} x {} {} -> at most {} sockets",
                if sources > 0 { sources } else { urls },
                if sources > 0 {
                    "source address(es)"
                } else {
                    "destination(s)"
                },
                thousands(port_cap)
            ));
            cap = cap.min(port_cap);
        }
    }
    Ok((cap, why))
}

/// How many subscribers to run: `--subscribers`, or with `--fit-fd-limit` as many as
/// the limits allow (the report says so); refuses when they do not fit otherwise.
pub fn fit_subscribers(
    args: &FanoutArgs,
    urls: usize,
    sources: usize,
    report: &mut Report,
) -> anyhow::Result<usize> {
    let (cap, limits) = capacity(args, urls, sources)?;
    let mut k = args.subscribers;
    if k as u64 > cap {
        let msg = format!(
            "{} subscribers do not fit this machine's limits: {}",
            thousands(k as u64),
            limits.join("; ")
        );
        if !args.fit_fd_limit {
            bail!("{msg}. Raise them (ulimit -n, --source-ips) or pass --fit-fd-limit to run as many as fit.");
        }
        k = cap as usize;
        report.notes.push(format!(
            "{msg}; ran {} instead (--fit-fd-limit)",
            thousands(k as u64)
        ));
    }
    for l in &limits {
        println!("fanout: {l}");
    }
    Ok(k)
}

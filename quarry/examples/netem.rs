//! A lossy, slow link for the TCP-vs-QUIC benchmark (`scripts/netbench.sh`), where `tc netem`
//! is not available: two TUN devices, one in this namespace (`10.77.0.1`) and one moved into
//! `--netns` (`10.77.0.2`), and this process between them. Every IP packet, TCP or UDP alike,
//! crosses it: dropped with probability `--loss`, otherwise delivered `--delay-ms` later, in
//! order, in each direction on its own (so the round trip gains twice the delay, as netem on
//! both ends of a link would). No bandwidth limit, no reordering, no duplication.
//!
//! Needs root (CAP_NET_ADMIN) and `ip` from iproute2; runs until interrupted, then prints what
//! it carried and dropped.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tun::Tun;

const NEAR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const FAR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

#[derive(Default)]
struct Counts {
    carried: AtomicU64,
    dropped: AtomicU64,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let status = Command::new("ip")
        .args(args)
        .status()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    match status.success() {
        true => Ok(()),
        false => Err(format!("ip {} failed: {status}", args.join(" "))),
    }
}

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// Packets read from `from`, dropped or held `delay`, then written to `to`.
fn relay(from: Arc<Tun>, to: Arc<Tun>, loss: f64, delay: Duration, counts: Arc<Counts>) {
    let (held, mut due) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    tokio::spawn(async move {
        while let Some((at, packet)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            let _ = to.send(&packet).await;
        }
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok(n) = from.recv(&mut buf).await else {
                return;
            };
            if rand::random::<f64>() < loss {
                counts.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            counts.carried.fetch_add(1, Ordering::Relaxed);
            if held
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
            {
                return;
            }
        }
    });
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let netns = arg("--netns", "quarry-bench");
    let loss: f64 = arg("--loss", "0")
        .parse()
        .map_err(|e| format!("--loss: {e}"))?;
    let delay = Duration::from_millis(
        arg("--delay-ms", "0")
            .parse()
            .map_err(|e| format!("--delay-ms: {e}"))?,
    );
    let build = |name: &str| {
        Tun::builder()
            .name(name)
            .mtu(1500)
            .build()
            .map_err(|e| format!("TUN {name}: {e}"))
            .and_then(|mut tuns| tuns.pop().ok_or_else(|| format!("TUN {name}: none made")))
    };
    let near = Arc::new(build("qbench0")?);
    let far = Arc::new(build("qbench1")?);
    // This side: 10.77.0.1, its peer 10.77.0.2 behind the device.
    ip(&[
        "addr",
        "add",
        &NEAR.to_string(),
        "peer",
        &FAR.to_string(),
        "dev",
        "qbench0",
    ])?;
    ip(&["link", "set", "qbench0", "up"])?;
    // The other side, in the namespace: the descriptor stays ours after the move.
    ip(&["link", "set", "qbench1", "netns", &netns])?;
    ip(&[
        "-n",
        &netns,
        "addr",
        "add",
        &FAR.to_string(),
        "peer",
        &NEAR.to_string(),
        "dev",
        "qbench1",
    ])?;
    ip(&["-n", &netns, "link", "set", "qbench1", "up"])?;
    ip(&["-n", &netns, "link", "set", "lo", "up"])?;
    let (out, back) = (Arc::new(Counts::default()), Arc::new(Counts::default()));
    relay(
        Arc::clone(&near),
        Arc::clone(&far),
        loss,
        delay,
        Arc::clone(&out),
    );
    relay(far, near, loss, delay, Arc::clone(&back));
    println!(
        "netem ready: {NEAR} <-> {FAR} (netns {netns}), loss {loss}, delay {} ms each way",
        delay.as_millis()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let count = |c: &Counts| {
        (
            c.carried.load(Ordering::Relaxed),
            c.dropped.load(Ordering::Relaxed),
        )
    };
    println!(
        "netem: towards {FAR} carried {} dropped {}; back carried {} dropped {}",
        count(&out).0,
        count(&out).1,
        count(&back).0,
        count(&back).1
    );
    Ok(())
}

//! Connection scenarios: `handshake` (new authenticated TLS connections as
//! fast as the server takes them), `churn` (connections that come and go
//! at a rate) and `idle` (hold N authenticated connections so the gateway's
//! memory per connection can be read).

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::live::Recorder;
use crate::target::Target;
use crate::verify::Link;

/// Opens `conns` connections with `tasks` at a time, closing each at once.
pub async fn handshakes(
    target: Rc<Target>,
    rec: Rc<RefCell<Recorder>>,
    first_user: u64,
    conns: u64,
    tasks: u64,
) {
    let give_up = Instant::now() + Duration::from_secs(600);
    let mut running = Vec::new();
    for t in 0..tasks {
        let n = conns / tasks + u64::from(t < conns % tasks);
        let (target, rec) = (target.clone(), rec.clone());
        running.push(glommio::spawn_local(async move {
            for _ in 0..n {
                match Link::open(
                    target.clone(),
                    rec.clone(),
                    first_user + t,
                    0,
                    give_up,
                    false,
                )
                .await
                {
                    Ok((link, _)) => link.close().await,
                    Err(e) => panic!("handshake: gave up: {}", e.0),
                }
            }
        }));
    }
    for task in running {
        task.await;
    }
}

/// `slots` connections, each connecting, staying for a random time with
/// mean `hold` and leaving, over and over until `duration` has passed.
pub async fn churn(
    target: Rc<Target>,
    rec: Rc<RefCell<Recorder>>,
    first_user: u64,
    slots: u64,
    hold: Duration,
    duration: Duration,
) {
    let end = Instant::now() + duration;
    let mut running = Vec::new();
    for s in 0..slots {
        let (target, rec) = (target.clone(), rec.clone());
        running.push(glommio::spawn_local(async move {
            while Instant::now() < end {
                let user = first_user + s;
                let give_up = end + Duration::from_secs(30);
                let Ok((link, _)) =
                    Link::open(target.clone(), rec.clone(), user, 0, give_up, false).await
                else {
                    break;
                };
                let stay = hold.mul_f64(-(1.0 - fastrand::f64()).ln());
                glommio::timer::sleep(stay.min(end.saturating_duration_since(Instant::now())))
                    .await;
                link.close().await;
            }
        }));
    }
    for task in running {
        task.await;
    }
}

/// Tells the process (or the `--procs` parent) when every worker's idle
/// connections are open: the last worker to finish writes `marker`.
#[derive(Clone)]
pub struct AllOpen {
    /// Workers in this process still opening.
    pub left: Arc<AtomicUsize>,
    /// File written when none are.
    pub marker: PathBuf,
}

/// Opens `conns` connections, signals `all_open`, holds them for `hold`.
pub async fn idle(
    target: Rc<Target>,
    rec: Rc<RefCell<Recorder>>,
    first_user: u64,
    conns: u64,
    hold: Duration,
    all_open: AllOpen,
) {
    let give_up = Instant::now() + Duration::from_secs(600);
    let mut opening = Vec::new();
    for k in 0..conns {
        let (target, rec) = (target.clone(), rec.clone());
        opening.push(glommio::spawn_local(async move {
            Link::open(target, rec, first_user + k, 0, give_up, false).await
        }));
    }
    let mut held = Vec::new();
    for task in opening {
        match task.await {
            Ok((link, _)) => held.push(link),
            Err(e) => panic!("idle: gave up: {}", e.0),
        }
    }
    if all_open.left.fetch_sub(1, Ordering::SeqCst) == 1 {
        std::fs::write(&all_open.marker, b"open\n").expect("write the all-open marker");
    }
    glommio::timer::sleep(hold).await;
    for link in held {
        link.close().await;
    }
}

/// The resident memory of process `pid`, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

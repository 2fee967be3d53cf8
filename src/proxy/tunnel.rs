//! Blind tunnels: bytes copied both ways, closed when either side ends or the idle timeout hits.

use std::time::Duration;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::activity::{Activity, Tracked};

/// Copies bytes between the agent and the upstream until one side closes or both are idle.
pub async fn run(agent: Upgraded, upstream: TcpStream, idle: Duration) {
    let activity = Activity::new();
    let mut agent = Tracked::new(TokioIo::new(agent), activity.clone());
    let mut upstream = Tracked::new(upstream, activity.clone());
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut agent, &mut upstream) => {
            if let Err(e) = r {
                tracing::debug!("tunnel closed: {e}");
            }
        }
        _ = activity.idle(idle) => tracing::debug!("tunnel closed after {idle:?} idle"),
    }
}

//! The budget of request bytes held in memory across every connection and stream: a request
//! takes its bytes from it before they are buffered (its declared length up front, or each frame
//! of a body of unknown length as it comes) and gives them back when its handler is done. A
//! request that finds the budget spent waits [`WAIT`] for it, then gets 503: never an
//! allocation beyond the budget, however many clients send large bodies at once. One client
//! address holds at most a quarter of it (never less than one largest body), so that a client
//! sending bodies it never finishes cannot spend the API server's share too.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;

/// The budget counts in units of this many bytes (a semaphore has at most `u32::MAX` permits a
/// call).
const UNIT: usize = 1024;
/// How long a request waits for bytes of the budget before it is refused.
pub const WAIT: Duration = Duration::from_millis(200);

pub struct ByteBudget {
    sem: Arc<Semaphore>,
    total_units: usize,
    /// The most one client address holds.
    per_client_units: usize,
    /// Units held per client address.
    clients: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// `nixuv_request_bytes_buffered`: bytes taken from the budget now.
    held: Gauge,
}

/// Bytes taken from the budget for one request; given back when dropped.
pub struct Held {
    permit: Option<OwnedSemaphorePermit>,
    client: Option<IpAddr>,
    clients: Arc<Mutex<HashMap<IpAddr, usize>>>,
    held: Gauge,
}

impl Held {
    fn units(&self) -> usize {
        self.permit.as_ref().map_or(0, |p| p.num_permits())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let units = self.units();
        self.held.dec_by((units * UNIT) as i64);
        if let (Some(ip), true) = (self.client, units > 0) {
            let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = clients.get_mut(&ip) {
                *n = n.saturating_sub(units);
                if *n == 0 {
                    clients.remove(&ip);
                }
            }
        }
    }
}

impl ByteBudget {
    /// `bytes` in all; one client at most a quarter, never less than `min_per_client`.
    pub fn new(bytes: usize, min_per_client: usize, held: Gauge) -> Self {
        let total_units = bytes.div_ceil(UNIT).max(1);
        let per_client_units = (total_units / 4).max(min_per_client.div_ceil(UNIT)).min(total_units);
        ByteBudget {
            sem: Arc::new(Semaphore::new(total_units)),
            total_units,
            per_client_units,
            clients: Arc::default(),
            held,
        }
    }

    pub fn total_bytes(&self) -> usize {
        self.total_units * UNIT
    }

    /// Nothing taken yet, for a request from `client` (if known).
    pub fn empty(&self, client: Option<IpAddr>) -> Held {
        Held { permit: None, client, clients: Arc::clone(&self.clients), held: self.held.clone() }
    }

    /// Takes `bytes` more for `into`, waiting at most [`WAIT`].
    pub async fn take(&self, into: &mut Held, bytes: usize) -> Result<(), ApiError> {
        let units = bytes.div_ceil(UNIT);
        if units == 0 {
            return Ok(());
        }
        let refused = || {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the server holds its budget of {} bytes of request bodies in flight; retry shortly",
                    self.total_bytes()
                ),
            )
        };
        if units > self.total_units {
            return Err(refused());
        }
        if let Some(ip) = into.client {
            let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
            let n = clients.entry(ip).or_default();
            if *n + units > self.per_client_units {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "this client holds its share ({} bytes) of the server's budget of request bodies in flight; retry shortly",
                        self.per_client_units * UNIT
                    ),
                ));
            }
            // Counted now, so that concurrent requests of one client cannot pass together.
            *n += units;
        }
        let units32 = u32::try_from(units).map_err(|_| refused())?;
        let permit = match Arc::clone(&self.sem).try_acquire_many_owned(units32) {
            Ok(p) => p,
            Err(_) => match tokio::time::timeout(WAIT, Arc::clone(&self.sem).acquire_many_owned(units32)).await {
                Ok(Ok(p)) => p,
                _ => {
                    self.untake_client(into.client, units);
                    return Err(refused());
                }
            },
        };
        self.held.inc_by((units * UNIT) as i64);
        match &mut into.permit {
            Some(p) => p.merge(permit),
            None => into.permit = Some(permit),
        }
        Ok(())
    }
}

impl ByteBudget {
    fn untake_client(&self, client: Option<IpAddr>, units: usize) {
        if let Some(ip) = client {
            let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = clients.get_mut(&ip) {
                *n = n.saturating_sub(units);
                if *n == 0 {
                    clients.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn takes_waits_refuses_and_gives_back() {
        let b = ByteBudget::new(10 * 1024, 0, Gauge::default());
        let mut a = b.empty(None);
        b.take(&mut a, 6000).await.unwrap();
        assert_eq!(b.held.get(), 6 * 1024);
        let mut c = b.empty(None);
        let e = b.take(&mut c, 5000).await.unwrap_err();
        assert_eq!(e.code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(b.take(&mut c, 100 * 1024).await.is_err(), "more than the whole budget");
        drop(a);
        assert_eq!(b.held.get(), 0);
        b.take(&mut c, 5000).await.unwrap();
        b.take(&mut c, 4000).await.unwrap();
        assert_eq!(b.held.get(), 9 * 1024);
        // One that waits gets the bytes given back meanwhile.
        let waiter = {
            let mut d = b.empty(None);
            async move {
                let r = b.take(&mut d, 8 * 1024).await;
                (r, d.units())
            }
        };
        let (r, _) = tokio::join!(waiter, async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(c);
        })
        .0;
        assert!(r.is_ok());
    }

    #[tokio::test]
    async fn one_client_holds_at_most_a_quarter() {
        let b = ByteBudget::new(64 * 1024, 4 * 1024, Gauge::default());
        let (x, y): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut h = b.empty(Some(x));
            b.take(&mut h, 4 * 1024).await.unwrap();
            held.push(h);
        }
        let mut more = b.empty(Some(x));
        let e = b.take(&mut more, 1024).await.unwrap_err();
        assert!(e.message.contains("this client holds its share"), "{}", e.message);
        let mut other = b.empty(Some(y));
        b.take(&mut other, 16 * 1024).await.unwrap();
        held.pop();
        b.take(&mut more, 1024).await.unwrap();
    }
}

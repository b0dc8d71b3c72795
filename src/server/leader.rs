//! Leader election for the stores reconciler: a `coordination.k8s.io/v1` Lease in nixuv's
//! namespace, taken and renewed as client-go's leaderelection does it — read the Lease, and write
//! it back with `replace` (PUT) carrying the `resourceVersion` that was read, so that of two
//! replicas writing at once the API server accepts one and answers the other 409 (optimistic
//! concurrency). Written on kube's `Api<Lease>` rather than with a leader-election crate: the
//! maintained one for kube 5 (kube-lease-manager) takes the lease with server-side apply and
//! strategic-merge patches, without a resourceVersion precondition.
//!
//! Expiry is judged on this replica's clock from when it last saw the Lease's record change
//! (client-go's "observed time"), never by comparing another node's `renewTime` with ours, so
//! clock skew between nodes does not matter. A leader that cannot renew for `renew_deadline`
//! (shorter than the lease duration) steps down before anyone else may take over.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::Api;
use tokio::sync::watch;

/// The election's settings (`stores.leaseDurationSeconds`, `stores.renewDeadlineSeconds`).
#[derive(Debug, Clone)]
pub struct Election {
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
}

impl Election {
    /// How often a candidate tries and a leader renews: a fifth of the renew deadline (client-go's
    /// 2 s for its 10 s default), at least 200 ms.
    pub fn retry_period(&self) -> Duration {
        (self.renew_deadline / 5).max(Duration::from_millis(200))
    }
}

/// What one attempt came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    /// This replica holds the lease (taken or renewed).
    Holding,
    /// Another replica holds an unexpired lease.
    HeldBy(String),
    /// Another replica wrote the Lease between our read and our write.
    Conflict,
}

/// The Lease's record as last seen, and when this replica saw it change.
#[derive(Debug, Default)]
pub struct Observed {
    record: Option<(String, Option<String>)>,
    at: Option<Instant>,
}

impl Observed {
    /// Notes `spec`; returns how long ago (on this clock) its record last changed.
    fn see(&mut self, spec: &LeaseSpec, now: Instant) -> Duration {
        let record =
            (spec.holder_identity.clone().unwrap_or_default(), spec.renew_time.as_ref().map(|t| t.0.to_string()));
        if self.record.as_ref() != Some(&record) {
            self.record = Some(record);
            self.at = Some(now);
        }
        now.saturating_duration_since(self.at.unwrap_or(now))
    }
}

/// Whether a lease held by `holder` may be taken by `me`: it is ours, nobody's, or its holder
/// has not renewed it for its duration as seen on this clock.
pub fn may_take(spec: &LeaseSpec, me: &str, unchanged_for: Duration, default_duration: Duration) -> bool {
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    let duration = spec
        .lease_duration_seconds
        .filter(|s| *s > 0)
        .map(|s| Duration::from_secs(s as u64))
        .unwrap_or(default_duration);
    holder.is_empty() || holder == me || unchanged_for > duration
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// One try to take or renew the lease.
pub async fn try_acquire_or_renew(
    api: &Api<Lease>,
    e: &Election,
    observed: &mut Observed,
) -> Result<Attempt, kube::Error> {
    let now = MicroTime(Timestamp::now());
    let duration_secs = e.lease_duration.as_secs().max(1) as i32;
    let Some(mut lease) = api.get_opt(&e.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(e.name.clone()), ..Default::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(e.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Attempt::Holding),
            Err(err) if conflict(&err) => Ok(Attempt::Conflict),
            Err(err) => Err(err),
        };
    };
    let mut spec = lease.spec.take().unwrap_or_default();
    let unchanged_for = observed.see(&spec, Instant::now());
    if !may_take(&spec, &e.identity, unchanged_for, e.lease_duration) {
        return Ok(Attempt::HeldBy(spec.holder_identity.unwrap_or_default()));
    }
    if spec.holder_identity.as_deref() != Some(e.identity.as_str()) {
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        spec.holder_identity = Some(e.identity.clone());
    }
    spec.renew_time = Some(now);
    spec.lease_duration_seconds = Some(duration_secs);
    lease.spec = Some(spec);
    // `lease.metadata.resourceVersion` is the one read above: the write fails if anyone wrote since.
    match api.replace(&e.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(Attempt::Holding),
        Err(err) if conflict(&err) => Ok(Attempt::Conflict),
        Err(err) => Err(err),
    }
}

/// Runs the election forever, publishing whether this replica leads on `leading`.
pub fn spawn(api: Api<Lease>, e: Election, leading: watch::Sender<bool>, on_change: impl Fn(bool) + Send + 'static) {
    tokio::spawn(async move {
        let mut observed = Observed::default();
        let mut last_renew: Option<Instant> = None;
        loop {
            let attempt = try_acquire_or_renew(&api, &e, &mut observed).await;
            let now = Instant::now();
            let was = *leading.borrow();
            let is = match attempt {
                Ok(Attempt::Holding) => {
                    last_renew = Some(now);
                    true
                }
                Ok(Attempt::HeldBy(holder)) => {
                    if was {
                        tracing::warn!(lease = %e.name, holder = %holder, "stores lease taken by another replica");
                    }
                    false
                }
                // A failed renewal: keep leading until the renew deadline, then step down (before
                // the lease can expire for the others).
                Ok(Attempt::Conflict) => was && last_renew.is_some_and(|t| now - t < e.renew_deadline),
                Err(err) => {
                    tracing::warn!(lease = %e.name, error = %err, "stores lease: the API did not answer");
                    was && last_renew.is_some_and(|t| now - t < e.renew_deadline)
                }
            };
            if is != was {
                if is {
                    tracing::info!(lease = %e.name, identity = %e.identity, "stores lease acquired: this replica reconciles the stores");
                } else {
                    tracing::warn!(lease = %e.name, identity = %e.identity, "stores lease lost: this replica stops reconciling");
                }
                leading.send_replace(is);
                on_change(is);
            }
            tokio::time::sleep(e.retry_period()).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: (!holder.is_empty()).then(|| holder.to_string()),
            lease_duration_seconds: Some(secs),
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_is_taken_only_when_free_ours_or_expired_on_this_clock() {
        let d = Duration::from_secs(15);
        assert!(may_take(&spec("", 15), "a", Duration::ZERO, d));
        assert!(may_take(&spec("a", 15), "a", Duration::ZERO, d));
        assert!(!may_take(&spec("b", 15), "a", Duration::from_secs(14), d));
        assert!(may_take(&spec("b", 15), "a", Duration::from_secs(16), d));
        // The Lease's own duration counts, not ours.
        assert!(!may_take(&spec("b", 60), "a", Duration::from_secs(30), d));
        // Seen unchanged since the first look: the clock starts then, whatever renewTime says.
        let mut o = Observed::default();
        let t0 = Instant::now();
        assert_eq!(o.see(&spec("b", 15), t0), Duration::ZERO);
        assert_eq!(o.see(&spec("b", 15), t0 + Duration::from_secs(5)), Duration::from_secs(5));
        let mut renewed = spec("b", 15);
        renewed.renew_time = Some(MicroTime(Timestamp::now()));
        assert_eq!(o.see(&renewed, t0 + Duration::from_secs(6)), Duration::ZERO);
    }
}

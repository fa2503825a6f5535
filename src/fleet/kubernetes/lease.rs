//! The scaler's election on Kubernetes: whoever holds a
//! `coordination.k8s.io` Lease runs the scaler.
//!
//! The holder renews the lease every third of its duration. It holds it
//! until two thirds of the duration after it *sent* its last successful
//! write (a hard deadline: every call is cut off there), so it has stepped
//! down before the `renewTime` it wrote can have run out. Another replica
//! takes the lease once a whole duration has passed since that
//! `renewTime` (`renewTime + leaseDurationSeconds`, by its own clock).
//! Every write carries the `resourceVersion` it read, so of two replicas
//! racing for a free lease exactly one wins. The margin of a third of the
//! duration between stepping down and being replaced assumes the replicas'
//! clocks agree to within that.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::time::Instant;

/// One replica's side of the election.
#[derive(Clone)]
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The lease as this replica last wrote it, while it holds it.
    held: Option<Lease>,
    /// Until when it holds it: two thirds of the duration after the last
    /// successful write was sent.
    deadline: Instant,
}

impl LeaseLock {
    /// A lock on the lease `name` in the client's default namespace, held
    /// as `identity` for `duration` at a time.
    pub fn new(client: Client, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api: Api::default_namespaced(client),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
            held: None,
            deadline: Instant::now(),
        }
    }

    /// Until when this replica holds the lease, if it does.
    pub fn held_until(&self) -> Option<Instant> {
        self.held
            .as_ref()
            .map(|_| self.deadline)
            .filter(|d| *d > Instant::now())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// One attempt to take (or keep) the lease; `Ok(true)` when this
    /// replica holds it now.
    pub async fn try_acquire(&mut self) -> Result<bool, kube::Error> {
        let sent = Instant::now();
        let now = Timestamp::now();
        let Some(current) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(written) => Ok(self.hold(written, sent)),
                // Another replica created it first.
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let mine = holder == Some(self.identity.as_str());
        if holder.is_some() && !mine && !expired(&spec, now) {
            return Ok(false);
        }
        let mut next = current;
        next.spec = Some(self.spec(now, Some(&spec)));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &next)
            .await
        {
            Ok(written) => Ok(self.hold(written, sent)),
            // Someone wrote it since it was read: they won this round.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Renews the lease. `false` once it is lost: another replica holds
    /// it, or its deadline passed without a successful renewal (no call
    /// outlives the deadline). After a failed call that left time, it is
    /// still held and may be renewed again.
    pub async fn renew(&mut self) -> bool {
        let Some(mut lease) = self.held.clone() else {
            return false;
        };
        let sent = Instant::now();
        let left = self.deadline.saturating_duration_since(sent);
        if left.is_zero() {
            self.held = None;
            return false;
        }
        if let Some(spec) = lease.spec.as_mut() {
            spec.renew_time = Some(MicroTime(Timestamp::now()));
        }
        let written = tokio::time::timeout(
            left,
            self.api.replace(&self.name, &PostParams::default(), &lease),
        )
        .await;
        match written {
            Ok(Ok(written)) => self.hold(written, sent),
            // Written by someone else since: ours only if it still names
            // this replica (a renewal whose answer was lost).
            Ok(Err(kube::Error::Api(status))) if status.code == 409 => {
                self.held = None;
                let left = self.deadline.saturating_duration_since(Instant::now());
                matches!(
                    tokio::time::timeout(left, self.try_acquire()).await,
                    Ok(Ok(true))
                )
            }
            Ok(Err(e)) => {
                tracing::warn!(lease = %self.name, error = %e, "cannot renew the scaler lease");
                self.held_until().is_some()
            }
            Err(_) => {
                tracing::warn!(lease = %self.name, "renewing the scaler lease timed out");
                self.held = None;
                false
            }
        }
    }

    /// Gives the lease up, so that another replica takes over at once
    /// rather than after its duration.
    pub async fn release(&mut self) {
        let Some(mut lease) = self.held.take() else {
            return;
        };
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
        }
        if let Err(e) = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(lease = %self.name, error = %e, "cannot release the scaler lease");
        }
    }

    fn hold(&mut self, written: Lease, sent: Instant) -> bool {
        let ours = written
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(self.identity.as_str());
        if ours {
            self.held = Some(written);
            self.deadline = sent + self.duration * 2 / 3;
        } else {
            self.held = None;
        }
        ours
    }

    /// The lease's spec with this replica holding it from `now`, after
    /// `previous` (kept when it held it already; counted as a transition
    /// when the lease changes hands).
    fn spec(&self, now: Timestamp, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let seconds = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        let mut spec = LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(seconds),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        };
        if let Some(previous) = previous {
            let transitions = previous.lease_transitions.unwrap_or(0);
            if previous.holder_identity.as_deref() == Some(self.identity.as_str()) {
                spec.acquire_time.clone_from(&previous.acquire_time);
                spec.lease_transitions = Some(transitions);
            } else {
                spec.lease_transitions = Some(transitions + 1);
            }
        }
        spec
    }
}

/// Whether a lease's holder has let it run out.
fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    now.duration_since(renewed.0) > duration
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(renewed_secs_ago: i64, duration: i32) -> LeaseSpec {
        let now = Timestamp::now();
        LeaseSpec {
            holder_identity: Some("other".to_owned()),
            lease_duration_seconds: Some(duration),
            renew_time: Some(MicroTime(now - SignedDuration::from_secs(renewed_secs_ago))),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_lease_runs_out_a_duration_after_its_renewal() {
        let now = Timestamp::now();
        assert!(!expired(&spec(5, 15), now));
        assert!(expired(&spec(16, 15), now));
        // A lease never renewed nor acquired holds nothing.
        assert!(expired(&LeaseSpec::default(), now));
    }
}

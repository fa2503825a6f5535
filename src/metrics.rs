//! Prometheus metrics, served at `GET /metrics` in the text format.

use std::sync::Mutex;

use entity::{InstanceStatus, RequestStatus};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelStatus {
    model: String,
    status: String,
}

/// The server's metrics. One per server, so tests may run several.
pub struct Metrics {
    registry: Registry,
    requests: Family<ModelStatus, Counter>,
    queue_depth: Family<ModelLabel, Gauge>,
    instances: Family<ModelStatus, Gauge>,
    queue_seconds: Family<ModelLabel, Histogram>,
    job_seconds: Family<ModelLabel, Histogram>,
    total_seconds: Family<ModelLabel, Histogram>,
    /// Label sets set last time, so that vanished ones drop to zero.
    instance_labels: Mutex<Vec<ModelStatus>>,
}

fn buckets() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("modelfleet");
        let requests = Family::<ModelStatus, Counter>::default();
        registry.register(
            "requests_finished",
            "Requests that reached a final status",
            requests.clone(),
        );
        let queue_depth = Family::<ModelLabel, Gauge>::default();
        registry.register(
            "queue_depth",
            "Requests waiting for an instance",
            queue_depth.clone(),
        );
        let instances = Family::<ModelStatus, Gauge>::default();
        registry.register("instances", "Instances by status", instances.clone());
        let queue_seconds =
            Family::<ModelLabel, Histogram>::new_with_constructor(buckets as fn() -> Histogram);
        registry.register(
            "queue_time_seconds",
            "From submit to job start",
            queue_seconds.clone(),
        );
        let job_seconds =
            Family::<ModelLabel, Histogram>::new_with_constructor(buckets as fn() -> Histogram);
        registry.register(
            "job_time_seconds",
            "From job start to the instance's answer",
            job_seconds.clone(),
        );
        let total_seconds =
            Family::<ModelLabel, Histogram>::new_with_constructor(buckets as fn() -> Histogram);
        registry.register(
            "total_time_seconds",
            "From submit to completion, successes",
            total_seconds.clone(),
        );
        Self {
            registry,
            requests,
            queue_depth,
            instances,
            queue_seconds,
            job_seconds,
            total_seconds,
            instance_labels: Mutex::new(Vec::new()),
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn request_finished(&self, model: &str, status: RequestStatus) {
        self.requests
            .get_or_create(&ModelStatus {
                model: model.to_owned(),
                status: format!("{status:?}").to_uppercase(),
            })
            .inc();
    }

    pub fn observe_queue(&self, model: &str, ms: i64) {
        self.queue_seconds
            .get_or_create(&label(model))
            .observe(ms as f64 / 1000.0);
    }

    pub fn observe_job(&self, model: &str, ms: i64) {
        self.job_seconds
            .get_or_create(&label(model))
            .observe(ms as f64 / 1000.0);
    }

    pub fn observe_total(&self, model: &str, ms: i64) {
        self.total_seconds
            .get_or_create(&label(model))
            .observe(ms as f64 / 1000.0);
    }

    pub fn set_queue_depths(&self, depths: &[(String, u64)]) {
        for (model, depth) in depths {
            self.queue_depth
                .get_or_create(&label(model))
                .set(i64::try_from(*depth).unwrap_or(i64::MAX));
        }
    }

    pub fn set_instances(&self, live: &[(String, InstanceStatus)]) {
        let mut counts: std::collections::HashMap<ModelStatus, i64> =
            std::collections::HashMap::new();
        for (model, status) in live {
            *counts
                .entry(ModelStatus {
                    model: model.clone(),
                    status: format!("{status:?}").to_uppercase(),
                })
                .or_default() += 1;
        }
        let mut previous = self
            .instance_labels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for old in previous.iter() {
            if !counts.contains_key(old) {
                self.instances.get_or_create(old).set(0);
            }
        }
        for (labels, n) in &counts {
            self.instances.get_or_create(labels).set(*n);
        }
        *previous = counts.into_keys().collect();
    }
}

fn label(model: &str) -> ModelLabel {
    ModelLabel {
        model: model.to_owned(),
    }
}

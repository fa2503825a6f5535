//! A model's Kubernetes settings and the pod they make for one instance.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, EnvVar, LocalObjectReference, Pod, PodAffinity,
    PodAffinityTerm, PodSpec, ResourceRequirements, Toleration, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::Deserialize;
use uuid::Uuid;

use crate::error::FieldErrors;

/// Every modelfleet pod carries this label, with the value `modelfleet`.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The model a pod serves.
pub const MODEL_LABEL: &str = "modelfleet.io/model";
/// The instance a pod is.
pub const INSTANCE_LABEL: &str = "modelfleet.io/instance";
/// The request a pod runs now; absent when idle.
pub const REQUEST_ANNOTATION: &str = "modelfleet.io/request-id";

/// How a model runs on Kubernetes: `[models.kubernetes]` in configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSettings {
    /// The container image; it must serve Cog's HTTP API on `port`.
    pub image: String,
    /// Cog's 5000 by default.
    #[serde(default = "cog_port")]
    pub port: u16,
    /// Replaces the image's entrypoint.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Replaces the image's arguments.
    #[serde(default)]
    pub args: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Quantities by resource name: `cpu`, `memory`, `nvidia.com/gpu`.
    #[serde(default)]
    pub requests: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: BTreeMap<String, String>,
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// As in a pod spec (`key`, `operator`, `value`, `effect`).
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    /// Names of secrets in the namespace.
    #[serde(default)]
    pub image_pull_secrets: Vec<String>,
    #[serde(default)]
    pub service_account: Option<String>,
}

fn cog_port() -> u16 {
    5000
}

/// The resource name of NVIDIA GPUs, counted in whole devices.
const GPU: &str = "nvidia.com/gpu";

impl PodSettings {
    /// Reads a model's `kubernetes` table, naming every field that breaks a
    /// rule (as `kubernetes.<field>`).
    pub fn parse(value: &serde_json::Value) -> Result<PodSettings, FieldErrors> {
        let mut errors = FieldErrors::new();
        let settings: PodSettings = match serde_json::from_value(value.clone()) {
            Ok(s) => s,
            Err(e) => {
                errors.insert("kubernetes".to_owned(), vec![e.to_string()]);
                return Err(errors);
            }
        };
        let mut fail = |field: &str, message: String| {
            errors
                .entry(format!("kubernetes.{field}"))
                .or_default()
                .push(message);
        };
        if settings.image.trim().is_empty() || settings.image.contains(char::is_whitespace) {
            fail(
                "image",
                "must be an image reference without spaces".to_owned(),
            );
        }
        if settings.port == 0 {
            fail("port", "must be 1-65535".to_owned());
        }
        for (field, map) in [
            ("requests", &settings.requests),
            ("limits", &settings.limits),
        ] {
            for (name, quantity) in map {
                if !is_quantity(quantity) {
                    fail(
                        field,
                        format!(
                            "{name} = {quantity:?} is not a Kubernetes quantity (such as 500m, 2, 4Gi)"
                        ),
                    );
                }
            }
        }
        for (field, map) in [
            ("requests", &settings.requests),
            ("limits", &settings.limits),
        ] {
            if let Some(gpus) = map.get(GPU)
                && !gpus.chars().all(|c| c.is_ascii_digit())
            {
                fail(field, format!("{GPU} = {gpus:?} must be a whole number"));
            }
        }
        for (i, toleration) in settings.tolerations.iter().enumerate() {
            if let Some(operator) = toleration.operator.as_deref()
                && !matches!(operator, "Exists" | "Equal")
            {
                fail(
                    "tolerations",
                    format!("[{i}].operator {operator:?} must be Exists or Equal"),
                );
            }
            if let Some(effect) = toleration.effect.as_deref()
                && !matches!(effect, "" | "NoSchedule" | "PreferNoSchedule" | "NoExecute")
            {
                fail(
                    "tolerations",
                    format!(
                        "[{i}].effect {effect:?} must be NoSchedule, PreferNoSchedule or NoExecute"
                    ),
                );
            }
        }
        for name in settings.env.keys() {
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                fail("env", format!("{name:?} is not a valid variable name"));
            }
        }
        if errors.is_empty() {
            Ok(settings)
        } else {
            Err(errors)
        }
    }

    /// The pod for one instance of `model_id`.
    pub fn pod(&self, model_id: &str, instance_id: Uuid) -> Pod {
        let labels = BTreeMap::from([
            (MANAGED_BY.to_owned(), "modelfleet".to_owned()),
            (MODEL_LABEL.to_owned(), model_id.to_owned()),
            (INSTANCE_LABEL.to_owned(), instance_id.to_string()),
        ]);
        let quantities = |map: &BTreeMap<String, String>| {
            (!map.is_empty()).then(|| {
                map.iter()
                    .map(|(k, v)| (k.clone(), Quantity(v.clone())))
                    .collect::<BTreeMap<_, _>>()
            })
        };
        let container = Container {
            name: "model".to_owned(),
            image: Some(self.image.clone()),
            command: self.command.clone(),
            args: self.args.clone(),
            env: (!self.env.is_empty()).then(|| {
                self.env
                    .iter()
                    .map(|(name, value)| EnvVar {
                        name: name.clone(),
                        value: Some(value.clone()),
                        ..Default::default()
                    })
                    .collect()
            }),
            ports: Some(vec![ContainerPort {
                container_port: i32::from(self.port),
                name: Some("cog".to_owned()),
                ..Default::default()
            }]),
            resources: Some(ResourceRequirements {
                requests: quantities(&self.requests),
                limits: quantities(&self.limits),
                ..Default::default()
            }),
            ..Default::default()
        };
        // Pods prefer nodes that already run modelfleet pods, so they pack
        // and emptied nodes can be removed.
        let packing = WeightedPodAffinityTerm {
            weight: 100,
            pod_affinity_term: PodAffinityTerm {
                label_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        MANAGED_BY.to_owned(),
                        "modelfleet".to_owned(),
                    )])),
                    ..Default::default()
                }),
                topology_key: "kubernetes.io/hostname".to_owned(),
                ..Default::default()
            },
        };
        Pod {
            metadata: ObjectMeta {
                name: Some(pod_name(model_id, instance_id)),
                labels: Some(labels),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![container],
                node_selector: (!self.node_selector.is_empty()).then(|| self.node_selector.clone()),
                tolerations: (!self.tolerations.is_empty()).then(|| self.tolerations.clone()),
                image_pull_secrets: (!self.image_pull_secrets.is_empty()).then(|| {
                    self.image_pull_secrets
                        .iter()
                        .map(|name| LocalObjectReference { name: name.clone() })
                        .collect()
                }),
                service_account_name: self.service_account.clone(),
                affinity: Some(Affinity {
                    pod_affinity: Some(PodAffinity {
                        preferred_during_scheduling_ignored_during_execution: Some(vec![packing]),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: None,
        }
    }
}

/// `mf-<model>-<last 12 hex digits of the instance id>`: unique, stable,
/// within Kubernetes' 63-character label limit for model ids up to 46
/// characters (longer ones are cut).
pub fn pod_name(model_id: &str, instance_id: Uuid) -> String {
    let id = instance_id.simple().to_string();
    let model: String = model_id.chars().take(46).collect();
    format!(
        "mf-{}-{}",
        model.trim_end_matches('-'),
        &id[id.len() - 12..]
    )
}

/// `123`, `0.5`, `500m`, `4Gi`, `1e3`, `2G`: a number with an optional SI
/// or binary suffix.
fn is_quantity(q: &str) -> bool {
    let number_end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(number_end);
    let number_ok = !number.is_empty() && number.parse::<f64>().is_ok_and(|n| n >= 0.0);
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .is_some_and(|exp| exp.parse::<i32>().is_ok());
    number_ok && suffix_ok
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_model_becomes_a_labelled_packing_pod() {
        let settings = PodSettings::parse(&json!({
            "image": "r8.im/acme/sdxl@sha256:abc",
            "env": { "HF_HOME": "/cache" },
            "requests": { "cpu": "2", "memory": "8Gi" },
            "limits": { "nvidia.com/gpu": "1" },
            "node_selector": { "pool": "gpu" },
            "tolerations": [{ "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" }],
            "image_pull_secrets": ["registry"],
            "service_account": "models",
        }))
        .expect("valid");
        let id = Uuid::parse_str("01a24330-3718-7441-93c3-86b10516d315").expect("uuid");
        let pod = serde_json::to_value(settings.pod("sdxl", id)).expect("json");
        assert_eq!(pod["metadata"]["name"], "mf-sdxl-86b10516d315");
        assert_eq!(pod["metadata"]["labels"][MANAGED_BY], "modelfleet");
        assert_eq!(pod["metadata"]["labels"][INSTANCE_LABEL], id.to_string());
        let container = &pod["spec"]["containers"][0];
        assert_eq!(container["ports"][0]["containerPort"], 5000);
        assert_eq!(container["resources"]["requests"]["memory"], "8Gi");
        assert_eq!(container["resources"]["limits"]["nvidia.com/gpu"], "1");
        assert_eq!(
            container["env"][0],
            json!({ "name": "HF_HOME", "value": "/cache" })
        );
        assert_eq!(pod["spec"]["nodeSelector"]["pool"], "gpu");
        assert_eq!(pod["spec"]["tolerations"][0]["operator"], "Exists");
        assert_eq!(pod["spec"]["imagePullSecrets"][0]["name"], "registry");
        assert_eq!(pod["spec"]["serviceAccountName"], "models");
        let preferred = &pod["spec"]["affinity"]["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
            [0];
        assert_eq!(
            preferred["podAffinityTerm"]["topologyKey"],
            "kubernetes.io/hostname"
        );
        assert_eq!(
            preferred["podAffinityTerm"]["labelSelector"]["matchLabels"][MANAGED_BY],
            "modelfleet"
        );
    }

    #[test]
    fn every_broken_rule_is_named() {
        let Err(errors) = PodSettings::parse(&json!({
            "image": "has space", "port": 0,
            "requests": { "cpu": "two" }, "env": { "1BAD": "x" },
        })) else {
            panic!("refused");
        };
        assert_eq!(
            errors.keys().collect::<Vec<_>>(),
            [
                "kubernetes.env",
                "kubernetes.image",
                "kubernetes.port",
                "kubernetes.requests"
            ]
        );
        let Err(errors) = PodSettings::parse(&json!({ "image": "x", "colour": "red" })) else {
            panic!("refused");
        };
        assert!(errors["kubernetes"][0].contains("colour"), "{errors:?}");

        // GPUs come whole; tolerations use the operators and effects
        // Kubernetes knows.
        let Err(errors) = PodSettings::parse(&json!({
            "image": "x",
            "limits": { "nvidia.com/gpu": "1.5" },
            "tolerations": [{ "key": "k", "operator": "Sometimes", "effect": "Never" }],
        })) else {
            panic!("refused");
        };
        assert!(
            errors["kubernetes.limits"][0].contains("whole number"),
            "{errors:?}"
        );
        assert_eq!(errors["kubernetes.tolerations"].len(), 2, "{errors:?}");
        assert!(
            PodSettings::parse(&json!({
                "image": "x",
                "limits": { "nvidia.com/gpu": "2" },
                "tolerations": [{ "key": "k", "operator": "Equal", "value": "v", "effect": "NoExecute" }],
            }))
            .is_ok()
        );
    }

    #[test]
    fn quantities_are_recognised() {
        for good in ["1", "0.5", "500m", "4Gi", "2G", "1e3", "100Ki"] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in ["", "two", "4GB", "-1", "1 Gi", "Gi"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn pod_names_stay_short_and_valid() {
        let id = Uuid::new_v4();
        let name = pod_name(&"a".repeat(63), id);
        assert!(name.len() <= 63, "{name}");
        assert!(pod_name("ends-with-dash-", id).starts_with("mf-ends-with-dash-"));
    }
}

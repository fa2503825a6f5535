//! What a pod's status means for its instance: whether it can serve yet,
//! has failed for good, or is still on its way (and why), and the detail an
//! operator sees as the instance's `statusDetail`.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use serde_json::{Value, json};

/// Container waits that end only when someone fixes the image or its
/// configuration.
const BROKEN_IMAGE: [&str; 5] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// Where a pod stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// Not serving yet; `reason` says what it waits for, when known
    /// (`Unschedulable`, `ContainerCreating`, ...).
    Waiting { reason: Option<String> },
    /// Running and ready at this address.
    Serving { ip: String },
    /// Something is wrong that may still pass: a crash loop with `restarts`
    /// so far, or an image that cannot be pulled (yet). The backend gives up
    /// after a bound.
    Troubled { reason: String, restarts: i32 },
    /// Over: the pod failed or finished (`Evicted`, `NodeLost`, `OOMKilled`,
    /// `Completed`, ...).
    Ended { reason: String },
}

/// A pod read: its stage and the detail shown to operators.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub stage: Stage,
    pub detail: Value,
}

/// Reads a pod's status.
pub fn observe(pod: &Pod) -> Observed {
    let status = pod.status.clone().unwrap_or_default();
    let phase = status.phase.clone().unwrap_or_else(|| "Pending".to_owned());
    let conditions = status.conditions.clone().unwrap_or_default();
    let containers = status.container_statuses.clone().unwrap_or_default();
    let condition = |kind: &str| conditions.iter().find(|c| c.type_ == kind);
    let detail = json!({
        "phase": phase,
        "reason": status.reason,
        "message": status.message,
        "node": pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        "podIP": status.pod_ip,
        "conditions": conditions.iter().map(|c| json!({
            "type": c.type_, "status": c.status, "reason": c.reason, "message": c.message,
        })).collect::<Vec<_>>(),
        "containers": containers.iter().map(container_detail).collect::<Vec<_>>(),
    });

    let stage = if pod.metadata.deletion_timestamp.is_some() {
        Stage::Ended {
            reason: "Deleted".to_owned(),
        }
    } else if phase == "Failed" || phase == "Succeeded" {
        let reason = status
            .reason
            .clone()
            .or_else(|| containers.iter().find_map(terminated_reason))
            .unwrap_or_else(|| phase.clone());
        Stage::Ended { reason }
    } else if let Some(trouble) = containers.iter().find_map(trouble) {
        trouble
    } else if phase == "Running"
        && condition("Ready").is_some_and(|c| c.status == "True")
        && let Some(ip) = status.pod_ip.clone()
    {
        Stage::Serving { ip }
    } else {
        let unscheduled = condition("PodScheduled")
            .filter(|c| c.status == "False")
            .and_then(|c| c.reason.clone());
        let waiting = containers
            .iter()
            .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone());
        Stage::Waiting {
            reason: unscheduled.or(waiting),
        }
    };
    Observed { stage, detail }
}

fn trouble(c: &ContainerStatus) -> Option<Stage> {
    let waiting = c.state.as_ref()?.waiting.as_ref()?.reason.clone()?;
    if BROKEN_IMAGE.contains(&waiting.as_str()) {
        return Some(Stage::Troubled {
            reason: waiting,
            restarts: c.restart_count,
        });
    }
    if waiting == "CrashLoopBackOff" {
        // Why it last died is more use than "it keeps dying".
        let reason = c
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .and_then(|t| t.reason.clone())
            .filter(|r| r == "OOMKilled")
            .unwrap_or(waiting);
        return Some(Stage::Troubled {
            reason,
            restarts: c.restart_count,
        });
    }
    None
}

fn terminated_reason(c: &ContainerStatus) -> Option<String> {
    c.state.as_ref()?.terminated.as_ref()?.reason.clone()
}

fn container_detail(c: &ContainerStatus) -> Value {
    let state = c.state.as_ref();
    let (state_name, reason, message) = match state {
        Some(s) if s.running.is_some() => ("running", None, None),
        Some(s) if s.waiting.is_some() => {
            let w = s.waiting.as_ref();
            (
                "waiting",
                w.and_then(|w| w.reason.clone()),
                w.and_then(|w| w.message.clone()),
            )
        }
        Some(s) if s.terminated.is_some() => {
            let t = s.terminated.as_ref();
            (
                "terminated",
                t.and_then(|t| t.reason.clone()),
                t.and_then(|t| t.message.clone()),
            )
        }
        _ => ("unknown", None, None),
    };
    json!({
        "name": c.name, "ready": c.ready, "restartCount": c.restart_count,
        "state": state_name, "reason": reason, "message": message,
        "lastTermination": c.last_state.as_ref().and_then(|s| s.terminated.as_ref()).map(|t| json!({
            "reason": t.reason, "exitCode": t.exit_code,
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(status: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": "p" },
            "spec": { "containers": [{ "name": "model" }], "nodeName": "n1" },
            "status": status,
        }))
        .expect("a pod")
    }

    #[test]
    fn a_ready_running_pod_serves() {
        let seen = observe(&pod(json!({
            "phase": "Running", "podIP": "10.0.0.7",
            "conditions": [{ "type": "Ready", "status": "True" }],
            "containerStatuses": [{ "name": "model", "ready": true, "restartCount": 0, "image": "i", "imageID": "",
                "state": { "running": {} } }],
        })));
        assert_eq!(
            seen.stage,
            Stage::Serving {
                ip: "10.0.0.7".to_owned()
            }
        );
        assert_eq!(seen.detail["node"], "n1");
        assert_eq!(seen.detail["containers"][0]["state"], "running");
    }

    #[test]
    fn an_unschedulable_pod_waits_and_says_why() {
        let seen = observe(&pod(json!({
            "phase": "Pending",
            "conditions": [{ "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu." }],
        })));
        assert_eq!(
            seen.stage,
            Stage::Waiting {
                reason: Some("Unschedulable".to_owned())
            }
        );
        assert_eq!(
            seen.detail["conditions"][0]["message"],
            "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
        );
    }

    #[test]
    fn image_and_crash_troubles_are_told_apart() {
        let waiting = |reason: &str, last: Value| {
            observe(&pod(json!({
                "phase": "Pending",
                "containerStatuses": [{ "name": "model", "ready": false, "restartCount": 3, "image": "i", "imageID": "",
                    "state": { "waiting": { "reason": reason } }, "lastState": last }],
            })))
            .stage
        };
        assert_eq!(
            waiting("ImagePullBackOff", json!({})),
            Stage::Troubled {
                reason: "ImagePullBackOff".to_owned(),
                restarts: 3
            }
        );
        assert_eq!(
            waiting(
                "CrashLoopBackOff",
                json!({ "terminated": { "exitCode": 1, "reason": "Error" } })
            ),
            Stage::Troubled {
                reason: "CrashLoopBackOff".to_owned(),
                restarts: 3
            }
        );
        assert_eq!(
            waiting(
                "CrashLoopBackOff",
                json!({ "terminated": { "exitCode": 137, "reason": "OOMKilled" } })
            ),
            Stage::Troubled {
                reason: "OOMKilled".to_owned(),
                restarts: 3
            }
        );
        assert_eq!(
            waiting("ContainerCreating", json!({})),
            Stage::Waiting {
                reason: Some("ContainerCreating".to_owned())
            }
        );
    }

    #[test]
    fn evicted_and_lost_pods_have_ended() {
        let seen = observe(&pod(
            json!({ "phase": "Failed", "reason": "Evicted", "message": "low on memory" }),
        ));
        assert_eq!(
            seen.stage,
            Stage::Ended {
                reason: "Evicted".to_owned()
            }
        );
        assert_eq!(seen.detail["message"], "low on memory");
        let oom = observe(&pod(json!({
            "phase": "Failed",
            "containerStatuses": [{ "name": "model", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                "state": { "terminated": { "exitCode": 137, "reason": "OOMKilled" } } }],
        })));
        assert_eq!(
            oom.stage,
            Stage::Ended {
                reason: "OOMKilled".to_owned()
            }
        );
    }
}

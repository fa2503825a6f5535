//! The `scale` subresource of MachineDeployments, as Cluster API serves it:
//! an `autoscaling/v1` `Scale` whose `spec.replicas` is the deployment's
//! `spec.replicas` and whose `status` is the deployment's replica count and
//! label selector. Writing it changes only the deployment's `spec.replicas`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::capi::desired_replicas;
use crate::{ApiError, Resource, Store, json_body, merge, merge_patch_body, scope};

impl Store {
    /// The `Scale` of a scalable object (MachineDeployments only).
    pub fn get_scale(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        scalable(resource)?;
        self.peek(resource, namespace, name, |stored| stored.map(scale_of))
            .ok_or_else(|| ApiError::not_found(resource, name))
    }

    /// Writes a `Scale`: `change` gets the current one and returns the one
    /// wanted, all under the store's lock. As the API server does, the
    /// wanted `metadata.resourceVersion`, when given, must be the stored one
    /// (`409 Conflict`), `spec.replicas` must not be negative
    /// (`422 Invalid`), and a write that changes nothing raises no version.
    pub fn write_scale(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
        change: impl FnOnce(Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        scalable(resource)?;
        let mut inner = self.lock();
        let key = (resource, scope(resource, namespace), name.to_owned());
        let Some(stored) = inner.objects.get(&key) else {
            return Err(ApiError::not_found(resource, name));
        };
        let current = scale_of(stored);
        let wanted = change(current.clone())?;
        let asked = wanted["metadata"]["resourceVersion"].as_str();
        if asked.is_some_and(|asked| Some(asked) != current["metadata"]["resourceVersion"].as_str())
        {
            return Err(ApiError::conflict(resource, name));
        }
        let replicas = replicas_of(&wanted)?;
        if current["spec"]["replicas"] == replicas {
            return Ok(current);
        }
        let mut object = stored.clone();
        object["spec"]["replicas"] = json!(replicas);
        let written = inner.commit(&self.changes, key, object, "MODIFIED");
        Ok(scale_of(&written))
    }
}

/// `404` for a resource that has no `scale` subresource.
fn scalable(resource: Resource) -> Result<(), ApiError> {
    if resource == Resource::MACHINE_DEPLOYMENT {
        Ok(())
    } else {
        Err(ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("{} have no scale subresource here", resource.plural),
        })
    }
}

/// The `Scale` that shows `object`'s replicas.
fn scale_of(object: &Value) -> Value {
    let meta = &object["metadata"];
    let name = meta["name"].as_str().unwrap_or_default();
    let selector = object["status"]["selector"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("cluster.x-k8s.io/deployment-name={name}"));
    json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": { "replicas": desired_replicas(object) },
        "status": {
            "replicas": object["status"]["replicas"].as_u64().unwrap_or(0),
            "selector": selector,
        },
    })
}

/// The replicas a `Scale` asks for: missing is 0, as in the API's types.
fn replicas_of(scale: &Value) -> Result<u64, ApiError> {
    let replicas = &scale["spec"]["replicas"];
    if replicas.is_null() {
        return Ok(0);
    }
    match replicas.as_i64() {
        Some(n) if n >= 0 => Ok(n as u64),
        Some(n) => Err(ApiError::invalid(&format!(
            "spec.replicas: Invalid value: {n}: must be greater than or equal to 0"
        ))),
        None => Err(ApiError::invalid(&format!(
            "spec.replicas: Invalid value: {replicas}: must be an integer"
        ))),
    }
}

/// `GET`, `PUT` and `PATCH` (merge patch) of
/// `/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}/scale`,
/// counted in [`Store::calls`] as `GET machinedeployments/scale` and so on.
pub(crate) async fn handle(
    State(store): State<Store>,
    method: Method,
    headers: HeaderMap,
    Path((group, version, ns, plural, name, subresource)): Path<(
        String,
        String,
        String,
        String,
        String,
        String,
    )>,
    body: Bytes,
) -> Response {
    let result = crate::resource(&group, &version, &plural).and_then(|r| {
        if subresource != "scale" {
            return Err(ApiError::not_found(r, &format!("{name}/{subresource}")));
        }
        store.count(format!("{method} {plural}/scale"));
        match method {
            Method::GET => store.get_scale(r, &ns, &name),
            Method::PUT => {
                let wanted = json_body(&body)?;
                store.write_scale(r, &ns, &name, |_| Ok(wanted))
            }
            Method::PATCH => {
                let patch = merge_patch_body(&headers, &body)?;
                store.write_scale(r, &ns, &name, |mut scale| {
                    merge(&mut scale, &patch);
                    Ok(scale)
                })
            }
            _ => Err(ApiError {
                code: 405,
                reason: "MethodNotAllowed",
                message: method.to_string(),
            }),
        }
    });
    match result {
        Ok(scale) => axum::Json(scale).into_response(),
        Err(e) => e.into_response(),
    }
}

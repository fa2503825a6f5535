//! The manifests in `deploy/`, read as `kubectl apply -f deploy/` reads a
//! folder (every document of every `.yaml`, `.yml` and `.json` file).
//!
//! Each document must parse into its k8s-openapi type with no field left
//! over, and be one of the six kinds the folder is meant to hold, once
//! each. Together they must give the server what it needs and nothing more:
//! the Role grants exactly [`PERMISSIONS`], bound to the server's
//! ServiceAccount; the Deployment runs as that account, with its probes on
//! the port the Service targets; the Service selects the server's pods; the
//! ConfigMap's configuration loads with the server's own loader, in the
//! environment the Deployment gives it.
//!
//! Each check is a function that returns what it found wrong, so that
//! `every_check_refuses_a_broken_manifest` can break copies of the
//! manifests and see each check refuse them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::Resource;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, PodSpec, Probe, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use modelfleet::config::{BackendKind, Config, DatabaseConfig};
use modelfleet::fleet::kubernetes::PERMISSIONS;
use modelfleet::fleet::kubernetes::pod::MANAGED_BY;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The server's container in the Deployment's pods.
const SERVER_CONTAINER: &str = "modelfleet";

/// Stands in for the Secret's database URL when the configuration is
/// loaded; nothing connects to it.
const PLACEHOLDER_DATABASE_URL: &str = "postgres://modelfleet@database.invalid/modelfleet";

/// What a check found wrong.
type Checked = Result<(), String>;

/// Manifest files: each one's name and text.
type Sources = Vec<(String, String)>;

/// Everything in `deploy/`: one object of each kind.
#[derive(Clone)]
struct Manifests {
    service_account: ServiceAccount,
    role: Role,
    role_binding: RoleBinding,
    config_map: ConfigMap,
    deployment: Deployment,
    service: Service,
}

// ---------------------------------------------------------------------------
// Reading

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Each manifest file's name and text, in the order kubectl applies them.
fn sources() -> Sources {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .expect("deploy/ is readable")
        .map(|entry| entry.expect("a deploy/ entry").path())
        .filter(|path| {
            matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("a readable manifest");
            let name = path
                .file_name()
                .map_or_else(String::new, |n| format!("deploy/{}", n.to_string_lossy()));
            (name, text)
        })
        .collect()
}

fn load() -> Manifests {
    parse(&sources()).unwrap_or_else(|problem| panic!("{problem}"))
}

#[derive(Default)]
struct Found {
    service_account: Option<ServiceAccount>,
    role: Option<Role>,
    role_binding: Option<RoleBinding>,
    config_map: Option<ConfigMap>,
    deployment: Option<Deployment>,
    service: Option<Service>,
}

fn parse(sources: &[(String, String)]) -> Result<Manifests, String> {
    let mut found = Found::default();
    for (file, text) in sources {
        // Empty documents (a trailing `---`) are skipped, as kubectl does.
        let documents: Vec<Value> =
            serde_saphyr::from_multiple(text).map_err(|e| format!("{file}: not YAML: {e}"))?;
        for (i, document) in documents.into_iter().enumerate() {
            let at = format!("{file}, document {}", i + 1);
            let api_version = document["apiVersion"].as_str().unwrap_or_default();
            let kind = document["kind"].as_str().unwrap_or_default();
            match (api_version, kind) {
                (ServiceAccount::API_VERSION, ServiceAccount::KIND) => {
                    take(&mut found.service_account, document, &at)?;
                }
                (Role::API_VERSION, Role::KIND) => take(&mut found.role, document, &at)?,
                (RoleBinding::API_VERSION, RoleBinding::KIND) => {
                    take(&mut found.role_binding, document, &at)?;
                }
                (ConfigMap::API_VERSION, ConfigMap::KIND) => {
                    take(&mut found.config_map, document, &at)?;
                }
                (Deployment::API_VERSION, Deployment::KIND) => {
                    take(&mut found.deployment, document, &at)?;
                }
                (Service::API_VERSION, Service::KIND) => take(&mut found.service, document, &at)?,
                _ => {
                    return Err(format!(
                        "{at}: `{api_version}` `{kind}` is not a kind deploy/ should hold \
                         (ServiceAccount, Role, RoleBinding, ConfigMap, Deployment, Service)"
                    ));
                }
            }
        }
    }
    fn needed<T: Resource>(object: Option<T>) -> Result<T, String> {
        object.ok_or_else(|| format!("deploy/ has no {}", T::KIND))
    }
    Ok(Manifests {
        service_account: needed(found.service_account)?,
        role: needed(found.role)?,
        role_binding: needed(found.role_binding)?,
        config_map: needed(found.config_map)?,
        deployment: needed(found.deployment)?,
        service: needed(found.service)?,
    })
}

/// Parses `document` as a `T` into `slot`. k8s-openapi skips fields it does
/// not know, where the API server would refuse them; writing the object
/// back and comparing finds every one (a misspelt or misplaced key).
fn take<T>(slot: &mut Option<T>, document: Value, at: &str) -> Checked
where
    T: Resource + DeserializeOwned + Serialize,
{
    if slot.is_some() {
        return Err(format!(
            "{at}: a second {}; deploy/ holds one of each kind",
            T::KIND
        ));
    }
    let object: T = serde_json::from_value(document.clone())
        .map_err(|e| format!("{at}: not a valid {}: {e}", T::KIND))?;
    let read = serde_json::to_value(&object).map_err(|e| format!("{at}: {e}"))?;
    if let Some(path) = first_difference(&document, &read, "") {
        return Err(format!(
            "{at}: `{path}` is not a {} field there (misspelt, misplaced, or null)",
            T::KIND
        ));
    }
    *slot = Some(object);
    Ok(())
}

/// The first path where `written` and `read` differ.
fn first_difference(written: &Value, read: &Value, path: &str) -> Option<String> {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match (written, read) {
        (Value::Object(written), Value::Object(read)) => {
            for (key, value) in written {
                match read.get(key) {
                    Some(other) => {
                        if let Some(found) = first_difference(value, other, &join(key)) {
                            return Some(found);
                        }
                    }
                    None => return Some(join(key)),
                }
            }
            read.keys()
                .find(|key| !written.contains_key(*key))
                .map(|key| join(key))
        }
        (Value::Array(written), Value::Array(read)) if written.len() == read.len() => written
            .iter()
            .zip(read)
            .enumerate()
            .find_map(|(i, (w, r))| first_difference(w, r, &format!("{path}[{i}]"))),
        _ if written == read => None,
        _ => Some(path.to_owned()),
    }
}

// ---------------------------------------------------------------------------
// What the manifests say, read for the checks

fn pod_spec(m: &Manifests) -> Result<&PodSpec, String> {
    m.deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .ok_or_else(|| "the Deployment has no pod template spec".to_owned())
}

fn server_container(m: &Manifests) -> Result<&Container, String> {
    pod_spec(m)?
        .containers
        .iter()
        .find(|c| c.name == SERVER_CONTAINER)
        .ok_or_else(|| format!("the Deployment has no container `{SERVER_CONTAINER}`"))
}

fn template_labels(m: &Manifests) -> BTreeMap<String, String> {
    m.deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.template.metadata.as_ref())
        .and_then(|meta| meta.labels.clone())
        .unwrap_or_default()
}

fn env_var<'a>(container: &'a Container, name: &str) -> Option<&'a EnvVar> {
    container.env.iter().flatten().find(|var| var.name == name)
}

/// A port as a probe or a Service names it, as a number: a name is looked
/// up among the server container's ports.
fn resolve_port(container: &Container, port: &IntOrString) -> Result<i32, String> {
    match port {
        IntOrString::Int(number) => Ok(*number),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .ok_or_else(|| format!("the server container has no port named `{name}`")),
    }
}

/// The container port the Service sends the API to.
fn api_port(m: &Manifests) -> Result<i32, String> {
    let container = server_container(m)?;
    let ports = m
        .service
        .spec
        .as_ref()
        .and_then(|spec| spec.ports.as_ref())
        .ok_or_else(|| "the Service has no ports".to_owned())?;
    let mut targets = BTreeSet::new();
    for port in ports {
        let target = port
            .target_port
            .clone()
            .unwrap_or(IntOrString::Int(port.port));
        targets.insert(resolve_port(container, &target)?);
    }
    match targets.into_iter().collect::<Vec<_>>()[..] {
        [port] => Ok(port),
        ref many => Err(format!(
            "the Service targets {many:?}; the server listens on one port"
        )),
    }
}

/// The path and port a probe asks, the port as a number.
fn probe_target(
    container: &Container,
    probe: Option<&Probe>,
    which: &str,
) -> Result<(String, i32), String> {
    let get = probe
        .and_then(|p| p.http_get.as_ref())
        .ok_or_else(|| format!("the server container has no HTTP {which} probe"))?;
    Ok((
        get.path.clone().unwrap_or_default(),
        resolve_port(container, &get.port)?,
    ))
}

fn namespace_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or_default()
}

/// The ConfigMap's files written out as the Deployment mounts them, and the
/// path of the one `MODELFLEET_CONFIG` names in that folder.
struct MountedConfig {
    _dir: tempfile::TempDir,
    file: PathBuf,
}

fn mounted_config(m: &Manifests) -> Result<MountedConfig, String> {
    let container = server_container(m)?;
    let config_path = env_var(container, "MODELFLEET_CONFIG")
        .and_then(|var| var.value.as_deref())
        .ok_or_else(|| "the server container sets no MODELFLEET_CONFIG".to_owned())?;
    let config_path = Path::new(config_path);
    let (Some(folder), Some(file_name)) = (config_path.parent(), config_path.file_name()) else {
        return Err(format!(
            "MODELFLEET_CONFIG={config_path:?} is not a file path"
        ));
    };
    let file_name = file_name.to_string_lossy().into_owned();
    let config_map_name = m.config_map.metadata.name.as_deref().unwrap_or_default();
    let mounted = container.volume_mounts.iter().flatten().any(|mount| {
        Path::new(&mount.mount_path) == folder
            && mount.sub_path.is_none()
            && pod_spec(m)
                .ok()
                .and_then(|spec| spec.volumes.as_ref())
                .into_iter()
                .flatten()
                .any(|volume| {
                    volume.name == mount.name
                        && volume.config_map.as_ref().is_some_and(|source| {
                            source.name == config_map_name && source.items.is_none()
                        })
                })
    });
    if !mounted {
        return Err(format!(
            "MODELFLEET_CONFIG names {config_path:?}, but the ConfigMap \
             `{config_map_name}` is not mounted (whole) at {folder:?}"
        ));
    }
    let data = m.config_map.data.clone().unwrap_or_default();
    if !data.contains_key(&file_name) {
        return Err(format!(
            "the ConfigMap has no `{file_name}`, which MODELFLEET_CONFIG names"
        ));
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    for (key, text) in &data {
        std::fs::write(dir.path().join(key), text).map_err(|e| e.to_string())?;
    }
    Ok(MountedConfig {
        file: dir.path().join(&file_name),
        _dir: dir,
    })
}

/// The server container's environment as the server would see it, with
/// the Secret's values replaced by stand-ins.
fn container_env(container: &Container) -> Vec<(String, String)> {
    container
        .env
        .iter()
        .flatten()
        .map(|var| {
            let value = match (&var.value, &var.value_from) {
                (Some(value), _) => value.clone(),
                (None, Some(_)) if var.name == "DATABASE_URL" => {
                    PLACEHOLDER_DATABASE_URL.to_owned()
                }
                _ => String::new(),
            };
            (var.name.clone(), value)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Checks

/// Everything is in one namespace: the Role's rights reach only its own.
fn check_one_namespace(m: &Manifests) -> Checked {
    let namespaces = [
        ("ServiceAccount", namespace_of(&m.service_account.metadata)),
        ("Role", namespace_of(&m.role.metadata)),
        ("RoleBinding", namespace_of(&m.role_binding.metadata)),
        ("ConfigMap", namespace_of(&m.config_map.metadata)),
        ("Deployment", namespace_of(&m.deployment.metadata)),
        ("Service", namespace_of(&m.service.metadata)),
    ];
    let distinct: BTreeSet<&str> = namespaces.iter().map(|(_, ns)| *ns).collect();
    if distinct.len() != 1 || distinct.contains("") {
        return Err(format!(
            "every object should name the same namespace: {namespaces:?}"
        ));
    }
    Ok(())
}

/// (API group, resource) → verbs.
type Grants = BTreeMap<(String, String), BTreeSet<String>>;

fn check_role_grants_exactly_permissions(m: &Manifests) -> Checked {
    grants_exactly(m.role.rules.iter().flatten(), PERMISSIONS)
        .map_err(|e| format!("the Role differs from PERMISSIONS: it {e}"))
}

/// That `rules` grant exactly `permissions`, no wildcard, no names.
fn grants_exactly<'a>(
    rules: impl Iterator<Item = &'a PolicyRule>,
    permissions: &[(&str, &str, &[&str])],
) -> Checked {
    let mut granted = Grants::new();
    for (i, rule) in rules.enumerate() {
        let PolicyRule {
            api_groups,
            non_resource_urls,
            resource_names,
            resources,
            verbs,
        } = rule;
        if non_resource_urls.is_some() {
            return Err(format!("Role rule {i} grants non-resource URLs"));
        }
        if resource_names.is_some() {
            return Err(format!(
                "Role rule {i} is narrowed to resource names; the server needs its verbs on any \
                 object (and `create` cannot be narrowed)"
            ));
        }
        let groups = api_groups.clone().unwrap_or_default();
        let resources = resources.clone().unwrap_or_default();
        if let Some(wild) = groups
            .iter()
            .chain(&resources)
            .chain(verbs)
            .find(|s| s.contains('*'))
        {
            return Err(format!("Role rule {i} has the wildcard `{wild}`"));
        }
        for group in &groups {
            for resource in &resources {
                granted
                    .entry((group.clone(), resource.clone()))
                    .or_default()
                    .extend(verbs.iter().cloned());
            }
        }
    }
    let wanted: Grants = permissions
        .iter()
        .map(|(group, resource, verbs)| {
            (
                ((*group).to_owned(), (*resource).to_owned()),
                verbs.iter().map(|v| (*v).to_owned()).collect(),
            )
        })
        .collect();
    let mut problems = Vec::new();
    for ((group, resource), verbs) in &wanted {
        let has = granted.get(&(group.clone(), resource.clone()));
        let missing: Vec<&String> = verbs
            .iter()
            .filter(|v| !has.is_some_and(|has| has.contains(*v)))
            .collect();
        if !missing.is_empty() {
            problems.push(format!(
                "lacks {missing:?} on `{resource}` in group {group:?}, which the server calls"
            ));
        }
    }
    for ((group, resource), verbs) in &granted {
        let allowed = wanted.get(&(group.clone(), resource.clone()));
        let extra: Vec<&String> = verbs
            .iter()
            .filter(|v| !allowed.is_some_and(|allowed| allowed.contains(*v)))
            .collect();
        if !extra.is_empty() {
            problems.push(format!(
                "grants {extra:?} on `{resource}` in group {group:?}, which the server never calls"
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; it "))
    }
}

fn check_role_binding(m: &Manifests) -> Checked {
    let binding = &m.role_binding;
    let role_ref = &binding.role_ref;
    let role_name = m.role.metadata.name.as_deref().unwrap_or_default();
    if role_ref.api_group != "rbac.authorization.k8s.io"
        || role_ref.kind != "Role"
        || role_ref.name != role_name
    {
        return Err(format!(
            "the RoleBinding refers to {role_ref:?}, not the Role `{role_name}`"
        ));
    }
    let account = &m.service_account.metadata;
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    let binds_the_account = |s: &k8s_openapi::api::rbac::v1::Subject| {
        s.kind == "ServiceAccount"
            && s.api_group.as_deref().unwrap_or_default().is_empty()
            && Some(&s.name) == account.name.as_ref()
            && s.namespace == account.namespace
    };
    match subjects {
        [only] if binds_the_account(only) => Ok(()),
        _ => Err(format!(
            "the RoleBinding should bind the ServiceAccount {:?} in {:?} and no one else; \
             it binds {subjects:?}",
            account.name, account.namespace
        )),
    }
}

fn check_deployment_identity_and_probes(m: &Manifests) -> Checked {
    let spec = pod_spec(m)?;
    let account = m.service_account.metadata.name.as_deref();
    if spec.service_account_name.as_deref() != account {
        return Err(format!(
            "the server's pods run as {:?}, not the ServiceAccount {account:?}",
            spec.service_account_name
        ));
    }
    let token_mounted = spec
        .automount_service_account_token
        .or(m.service_account.automount_service_account_token)
        .unwrap_or(true);
    if !token_mounted {
        return Err("the server's pods get no ServiceAccount token to reach the API".to_owned());
    }
    let container = server_container(m)?;
    let port = api_port(m)?;
    for (which, probe, path) in [
        ("liveness", container.liveness_probe.as_ref(), "/healthz"),
        ("readiness", container.readiness_probe.as_ref(), "/readyz"),
    ] {
        let target = probe_target(container, probe, which)?;
        if target != (path.to_owned(), port) {
            return Err(format!(
                "the {which} probe asks {target:?}; it should ask {path} on port {port}, \
                 where the Service sends the API"
            ));
        }
    }
    Ok(())
}

fn check_service_selects_the_server(m: &Manifests) -> Checked {
    let labels = template_labels(m);
    let selector = m
        .service
        .spec
        .as_ref()
        .and_then(|spec| spec.selector.clone())
        .unwrap_or_default();
    if selector.is_empty() {
        return Err("the Service selects nothing".to_owned());
    }
    if let Some((key, value)) = selector.iter().find(|(k, v)| labels.get(*k) != Some(*v)) {
        return Err(format!(
            "the Service selects {key}={value}, which the server's pods ({labels:?}) lack"
        ));
    }
    // The scaler treats pods with this label (and its scope) as its model
    // instances; the server's own pods must never look like one.
    if labels.get(MANAGED_BY).map(String::as_str) == Some("modelfleet") {
        return Err(format!(
            "the server's pods carry {MANAGED_BY}=modelfleet, the label of model pods"
        ));
    }
    Ok(())
}

fn check_config_loads_for_kubernetes(m: &Manifests) -> Checked {
    let mounted = mounted_config(m)?;
    let container = server_container(m)?;
    let config = Config::load_from(Some(&mounted.file), container_env(container))
        .map_err(|e| format!("the ConfigMap's configuration does not load: {e}"))?;
    if config.kubernetes.backend != BackendKind::Kubernetes {
        return Err(format!(
            "the configuration selects the {:?} backend, not kubernetes",
            config.kubernetes.backend
        ));
    }
    let namespace = namespace_of(&m.role.metadata);
    if let Some(configured) = &config.kubernetes.namespace
        && configured != namespace
    {
        return Err(format!(
            "model pods would go to namespace `{configured}`, but the Role covers `{namespace}`"
        ));
    }
    let port = api_port(m)?;
    let want = SocketAddr::from(([0, 0, 0, 0], u16::try_from(port).unwrap_or_default()));
    if config.server.bind != want {
        return Err(format!(
            "the server would listen on {}; it should listen on {want}, where the Service sends the API",
            config.server.bind
        ));
    }
    Ok(())
}

fn check_database_url_from_a_secret(m: &Manifests) -> Checked {
    let container = server_container(m)?;
    let from_secret = env_var(container, "DATABASE_URL").is_some_and(|var| {
        var.value.is_none()
            && var
                .value_from
                .as_ref()
                .and_then(|from| from.secret_key_ref.as_ref())
                .is_some_and(|secret| !secret.name.is_empty() && !secret.key.is_empty())
    });
    if !from_secret {
        return Err("DATABASE_URL should come from a Secret (secretKeyRef)".to_owned());
    }
    let mounted = mounted_config(m)?;
    let config = Config::load_from(Some(&mounted.file), Vec::new())
        .map_err(|e| format!("the ConfigMap's configuration does not load: {e}"))?;
    if config.database.url != DatabaseConfig::default().url {
        return Err(
            "the ConfigMap sets database.url; it can hold a password and belongs in the Secret"
                .to_owned(),
        );
    }
    Ok(())
}

fn check_unprivileged(m: &Manifests) -> Checked {
    let pod = pod_spec(m)?.security_context.clone().unwrap_or_default();
    let container = server_container(m)?
        .security_context
        .clone()
        .unwrap_or_default();
    let non_root = container.run_as_non_root.or(pod.run_as_non_root) == Some(true);
    let drops_all = container
        .capabilities
        .as_ref()
        .and_then(|c| c.drop.as_ref())
        .is_some_and(|drop| drop.iter().any(|c| c == "ALL"));
    let problems: Vec<&str> = [
        (non_root, "runAsNonRoot: true"),
        (
            container.read_only_root_filesystem == Some(true),
            "readOnlyRootFilesystem: true",
        ),
        (
            container.allow_privilege_escalation == Some(false),
            "allowPrivilegeEscalation: false",
        ),
        (drops_all, "capabilities.drop: [ALL]"),
        (container.privileged != Some(true), "not privileged"),
    ]
    .into_iter()
    .filter(|(ok, _)| !ok)
    .map(|(_, want)| want)
    .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("the server container should have {problems:?}"))
    }
}

fn assert_ok(checked: Checked) {
    if let Err(problem) = checked {
        panic!("{problem}");
    }
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn every_document_is_one_of_the_expected_kinds_with_known_fields() {
    let files = sources();
    assert!(!files.is_empty(), "deploy/ holds no manifest");
    load();
}

#[test]
fn everything_is_in_one_namespace() {
    assert_ok(check_one_namespace(&load()));
}

#[test]
fn the_role_grants_exactly_the_calls_the_server_makes() {
    assert_ok(check_role_grants_exactly_permissions(&load()));
}

/// The autoscaler's ClusterRole grants exactly what it calls, and is
/// bound to the server's account.
#[test]
fn the_autoscaler_cluster_role_grants_exactly_its_calls() {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    use modelfleet::fleet::kubernetes::AUTOSCALER_PERMISSIONS;
    let text = std::fs::read_to_string(deploy_dir().join("autoscaler/rbac.yaml"))
        .expect("deploy/autoscaler/rbac.yaml");
    let mut role = None;
    let mut binding = None;
    for document in serde_saphyr::from_multiple::<Value>(&text).expect("YAML") {
        match document["kind"].as_str() {
            Some("ClusterRole") => {
                role =
                    Some(serde_json::from_value::<ClusterRole>(document).expect("a ClusterRole"));
            }
            Some("ClusterRoleBinding") => {
                binding = Some(
                    serde_json::from_value::<ClusterRoleBinding>(document)
                        .expect("a ClusterRoleBinding"),
                );
            }
            other => panic!("unexpected kind {other:?} in deploy/autoscaler/rbac.yaml"),
        }
    }
    let role = role.expect("a ClusterRole");
    assert_ok(
        grants_exactly(role.rules.iter().flatten(), AUTOSCALER_PERMISSIONS)
            .map_err(|e| format!("the ClusterRole differs from AUTOSCALER_PERMISSIONS: it {e}")),
    );
    let binding = binding.expect("a ClusterRoleBinding");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(binding.role_ref.name.clone()), role.metadata.name);
    let subject = &binding.subjects.as_ref().expect("subjects")[0];
    let account = load().service_account;
    assert_eq!(Some(subject.name.clone()), account.metadata.name);
    assert_eq!(subject.namespace, account.metadata.namespace);
}

#[test]
fn the_role_binding_gives_the_role_to_the_service_account() {
    assert_ok(check_role_binding(&load()));
}

#[test]
fn the_deployment_runs_as_the_account_with_probes_on_the_api_port() {
    assert_ok(check_deployment_identity_and_probes(&load()));
}

#[test]
fn the_service_selects_the_server_pods() {
    assert_ok(check_service_selects_the_server(&load()));
}

#[test]
fn the_config_map_loads_with_the_server_loader_for_kubernetes() {
    assert_ok(check_config_loads_for_kubernetes(&load()));
}

#[test]
fn the_database_url_comes_from_a_secret() {
    assert_ok(check_database_url_from_a_secret(&load()));
}

#[test]
fn the_server_runs_unprivileged() {
    assert_ok(check_unprivileged(&load()));
}

/// `text` with `from` replaced; `from` must be there, or the case would
/// prove nothing.
fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} is not in the manifest");
    text.replacen(from, to, 1)
}

#[test]
fn reading_refuses_unknown_kinds_unknown_fields_and_repeats() {
    let good = sources();
    let edit = |file: &str, change: &dyn Fn(&str) -> String| -> Sources {
        let mut files = good.clone();
        let (_, text) = files
            .iter_mut()
            .find(|(name, _)| name == file)
            .unwrap_or_else(|| panic!("no {file}"));
        *text = change(text);
        files
    };
    let cluster_role = "\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\n\
                        metadata:\n  name: modelfleet\nrules: []\n";
    let cases: Vec<(&str, Sources, &str)> = vec![
        (
            "a ClusterRole",
            edit("deploy/rbac.yaml", &|t| format!("{t}{cluster_role}")),
            "ClusterRole",
        ),
        (
            "a misspelt field",
            edit("deploy/deployment.yaml", &|t| {
                replaced(t, "readinessProbe:", "readinesProbe:")
            }),
            "readinesProbe",
        ),
        (
            "a field in the wrong place",
            edit("deploy/service.yaml", &|t| {
                replaced(t, "  type: ClusterIP", "  type: ClusterIP\n  replicas: 2")
            }),
            "spec.replicas",
        ),
        (
            "a second Role",
            edit("deploy/rbac.yaml", &|t| {
                let role = t
                    .split("\n---\n")
                    .find(|doc| doc.contains("kind: Role\n"))
                    .expect("the Role document")
                    .to_owned();
                format!("{t}\n---\n{role}")
            }),
            "a second Role",
        ),
        (
            "no Service",
            good.iter()
                .filter(|(name, _)| name != "deploy/service.yaml")
                .cloned()
                .collect(),
            "no Service",
        ),
    ];
    for (case, files, named) in cases {
        match parse(&files) {
            Ok(_) => panic!("{case}: read without complaint"),
            Err(problem) => assert!(problem.contains(named), "{case}: {problem}"),
        }
    }
}

/// Every check refuses a manifest broken the way it guards against.
#[test]
fn every_check_refuses_a_broken_manifest() {
    type Break = fn(&mut Manifests);
    type Check = fn(&Manifests) -> Checked;
    fn rules(m: &mut Manifests) -> &mut Vec<PolicyRule> {
        m.role.rules.as_mut().expect("rules")
    }
    fn template(m: &mut Manifests) -> &mut PodSpec {
        m.deployment
            .spec
            .as_mut()
            .and_then(|s| s.template.spec.as_mut())
            .expect("a pod spec")
    }
    fn server(m: &mut Manifests) -> &mut Container {
        template(m)
            .containers
            .iter_mut()
            .find(|c| c.name == SERVER_CONTAINER)
            .expect("the server container")
    }
    fn env<'a>(m: &'a mut Manifests, name: &str) -> &'a mut EnvVar {
        server(m)
            .env
            .iter_mut()
            .flatten()
            .find(|v| v.name == name)
            .expect("the variable")
    }
    fn toml(m: &mut Manifests) -> &mut String {
        m.config_map
            .data
            .as_mut()
            .and_then(|d| d.get_mut("modelfleet.toml"))
            .expect("modelfleet.toml")
    }
    fn edit_toml(m: &mut Manifests, from: &str, to: &str) {
        let text = toml(m);
        *text = replaced(text, from, to);
    }
    let cases: Vec<(&str, Break, Check)> = vec![
        (
            "a Role in another namespace",
            |m| m.role.metadata.namespace = Some("default".to_owned()),
            check_one_namespace,
        ),
        (
            "an extra verb",
            |m| rules(m)[0].verbs.push("get".to_owned()),
            check_role_grants_exactly_permissions,
        ),
        (
            "a missing verb",
            |m| rules(m)[0].verbs.retain(|v| v != "watch"),
            check_role_grants_exactly_permissions,
        ),
        (
            "an extra resource",
            |m| {
                rules(m).push(PolicyRule {
                    api_groups: Some(vec![String::new()]),
                    resources: Some(vec!["secrets".to_owned()]),
                    verbs: vec!["get".to_owned()],
                    ..Default::default()
                });
            },
            check_role_grants_exactly_permissions,
        ),
        (
            "a missing resource",
            |m| {
                rules(m).retain(|r| r.resources.as_deref() != Some(&["events".to_owned()][..]));
            },
            check_role_grants_exactly_permissions,
        ),
        (
            "the right verbs in the wrong group",
            |m| {
                for rule in rules(m) {
                    if rule.resources.as_deref() == Some(&["leases".to_owned()][..]) {
                        rule.api_groups = Some(vec![String::new()]);
                    }
                }
            },
            check_role_grants_exactly_permissions,
        ),
        (
            "a wildcard verb",
            |m| rules(m)[1].verbs = vec!["*".to_owned()],
            check_role_grants_exactly_permissions,
        ),
        (
            "a rule narrowed to names",
            |m| rules(m)[2].resource_names = Some(vec!["modelfleet".to_owned()]),
            check_role_grants_exactly_permissions,
        ),
        (
            "a binding to another role",
            |m| m.role_binding.role_ref.name = "admin".to_owned(),
            check_role_binding,
        ),
        (
            "a binding to a ClusterRole",
            |m| m.role_binding.role_ref.kind = "ClusterRole".to_owned(),
            check_role_binding,
        ),
        (
            "a binding to another account",
            |m| {
                if let Some(s) = m.role_binding.subjects.as_mut() {
                    s[0].name = "default".to_owned();
                }
            },
            check_role_binding,
        ),
        (
            "a binding to one more subject",
            |m| {
                if let Some(s) = m.role_binding.subjects.as_mut() {
                    let mut other = s[0].clone();
                    other.name = "default".to_owned();
                    s.push(other);
                }
            },
            check_role_binding,
        ),
        (
            "pods running as the default account",
            |m| template(m).service_account_name = None,
            check_deployment_identity_and_probes,
        ),
        (
            "no token mounted",
            |m| template(m).automount_service_account_token = Some(false),
            check_deployment_identity_and_probes,
        ),
        (
            "liveness on /readyz",
            |m| {
                if let Some(get) = server(m)
                    .liveness_probe
                    .as_mut()
                    .and_then(|p| p.http_get.as_mut())
                {
                    get.path = Some("/readyz".to_owned());
                }
            },
            check_deployment_identity_and_probes,
        ),
        (
            "readiness on another port",
            |m| {
                if let Some(get) = server(m)
                    .readiness_probe
                    .as_mut()
                    .and_then(|p| p.http_get.as_mut())
                {
                    get.port = IntOrString::Int(9090);
                }
            },
            check_deployment_identity_and_probes,
        ),
        (
            "no readiness probe",
            |m| server(m).readiness_probe = None,
            check_deployment_identity_and_probes,
        ),
        (
            "the Service aiming past the probes",
            |m| {
                if let Some(ports) = m.service.spec.as_mut().and_then(|s| s.ports.as_mut()) {
                    ports[0].target_port = Some(IntOrString::Int(9090));
                }
            },
            check_deployment_identity_and_probes,
        ),
        (
            "a selector the pods do not match",
            |m| {
                if let Some(selector) = m.service.spec.as_mut().and_then(|s| s.selector.as_mut()) {
                    selector.insert(
                        "app.kubernetes.io/component".to_owned(),
                        "worker".to_owned(),
                    );
                }
            },
            check_service_selects_the_server,
        ),
        (
            "server pods labelled as model pods",
            |m| {
                if let Some(meta) = m
                    .deployment
                    .spec
                    .as_mut()
                    .and_then(|s| s.template.metadata.as_mut())
                {
                    meta.labels
                        .get_or_insert_default()
                        .insert(MANAGED_BY.to_owned(), "modelfleet".to_owned());
                }
            },
            check_service_selects_the_server,
        ),
        (
            "the local backend",
            |m| edit_toml(m, "backend = \"kubernetes\"", "backend = \"local\""),
            check_config_loads_for_kubernetes,
        ),
        (
            "a value the loader refuses",
            |m| edit_toml(m, "lease_duration_secs = 15", "lease_duration_secs = 1"),
            check_config_loads_for_kubernetes,
        ),
        (
            "a model without pod settings",
            |m| edit_toml(m, "[models.kubernetes]", "[models.elsewhere]"),
            check_config_loads_for_kubernetes,
        ),
        (
            "pods in a namespace the Role does not cover",
            |m| edit_toml(m, "namespace = \"modelfleet\"", "namespace = \"models\""),
            check_config_loads_for_kubernetes,
        ),
        (
            "listening on loopback",
            |m| env(m, "MODELFLEET_BIND").value = Some("127.0.0.1:8080".to_owned()),
            check_config_loads_for_kubernetes,
        ),
        (
            "the config mounted elsewhere",
            |m| {
                for mount in server(m).volume_mounts.iter_mut().flatten() {
                    mount.mount_path = "/config".to_owned();
                }
            },
            check_config_loads_for_kubernetes,
        ),
        (
            "a literal DATABASE_URL",
            |m| {
                let var = env(m, "DATABASE_URL");
                var.value_from = None;
                var.value = Some("postgres://modelfleet:hunter2@db/modelfleet".to_owned());
            },
            check_database_url_from_a_secret,
        ),
        (
            "the database URL in the ConfigMap",
            |m| {
                toml(m).push_str(
                    "\n[database]\nurl = \"postgres://modelfleet:hunter2@db/modelfleet\"\n",
                );
            },
            check_database_url_from_a_secret,
        ),
        (
            "a writable root file system",
            |m| {
                if let Some(sc) = server(m).security_context.as_mut() {
                    sc.read_only_root_filesystem = Some(false);
                }
            },
            check_unprivileged,
        ),
        (
            "root allowed",
            |m| {
                if let Some(sc) = template(m).security_context.as_mut() {
                    sc.run_as_non_root = None;
                }
            },
            check_unprivileged,
        ),
    ];
    let good = load();
    for (case, break_it, check) in cases {
        assert_ok(check(&good));
        let mut broken = good.clone();
        break_it(&mut broken);
        assert!(check(&broken).is_err(), "{case}: the check let it through");
    }
}

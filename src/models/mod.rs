//! Models: what can be run, and how each backend starts it.
//!
//! Models come from configuration (`[[models]]` in the config file, or a
//! `models.toml` beside it, applied at start-up) and from the admin API. With
//! no model configured at all, the example models in `examples/models` are
//! served, so that a fresh checkout runs real predictions.

mod registry;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

pub use registry::ModelRegistry;

use crate::error::FieldErrors;

static SLUG: LazyLock<Regex> = LazyLock::new(|| {
    #[expect(
        clippy::unwrap_used,
        reason = "a constant pattern, checked by the tests"
    )]
    Regex::new(r"^[a-z0-9][a-z0-9-]{0,62}$").unwrap()
});

/// How modelfleet talks to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, async_graphql::Enum)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// Cog's HTTP prediction API.
    Cog,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Cog => "COG",
        }
    }
}

/// A model as written in configuration. Durations are in seconds there.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default)]
    pub min_instances: u32,
    #[serde(default = "default_max_instances")]
    pub max_instances: u32,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    #[serde(default = "default_max_input_bytes")]
    pub max_input_bytes: u64,
    #[serde(default)]
    pub local: Option<LocalSpec>,
    /// How the Kubernetes backend runs it (see
    /// [`crate::fleet::kubernetes::pod::PodSettings`]); checked on load,
    /// kept as given.
    #[serde(default)]
    pub kubernetes: Option<serde_json::Value>,
}

fn default_protocol() -> Protocol {
    Protocol::Cog
}
fn default_true() -> bool {
    true
}
fn default_max_instances() -> u32 {
    1
}
fn default_idle_timeout() -> u64 {
    300
}
fn default_request_timeout() -> u64 {
    600
}
fn default_max_input_bytes() -> u64 {
    1024 * 1024
}

/// How the local backend starts a model: a command run in a folder with
/// `PORT` set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSpec {
    /// The program and its arguments; run in `workdir` with `PORT` set.
    pub command: Vec<String>,
    /// The folder it runs in. A relative path is taken from the folder of
    /// the configuration file that names it.
    pub workdir: PathBuf,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// How long the instance may take to report READY.
    #[serde(default = "default_start_timeout")]
    pub start_timeout_secs: u64,
    #[serde(default)]
    pub setup: Option<SetupSpec>,
}

fn default_start_timeout() -> u64 {
    300
}

/// A one-time step run in the model's folder before its first instance
/// starts (making a virtual environment, say), and again only when the
/// command or one of its input files changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupSpec {
    pub command: Vec<String>,
    /// Files (relative to the workdir) whose contents decide whether the
    /// setup must run again.
    #[serde(default)]
    pub inputs: Vec<PathBuf>,
}

/// A model, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub id: String,
    pub name: String,
    pub description: String,
    pub protocol: Protocol,
    pub enabled: bool,
    pub min_instances: u32,
    pub max_instances: u32,
    pub idle_timeout_ms: i64,
    pub request_timeout_ms: i64,
    pub max_input_bytes: i64,
    pub local: Option<LocalSpec>,
    pub kubernetes: Option<serde_json::Value>,
}

/// The most instances one model may ask for.
pub const MAX_INSTANCES: u32 = 256;

impl ModelConfig {
    /// Checks every rule, resolving a relative `local.workdir` against
    /// `base`. All failures come back together, by field.
    pub fn validate(self, base: &Path) -> Result<ModelSpec, FieldErrors> {
        let mut errors = FieldErrors::new();
        let mut fail = |field: &str, message: &str| {
            errors
                .entry(field.to_owned())
                .or_default()
                .push(message.to_owned());
        };
        if !SLUG.is_match(&self.id) {
            fail(
                "id",
                "must be 1-63 characters of lower-case letters, digits and `-`, starting with a letter or digit",
            );
        }
        if self.max_instances == 0 || self.max_instances > MAX_INSTANCES {
            fail("maxInstances", "must be between 1 and 256");
        }
        if self.min_instances > self.max_instances {
            fail("minInstances", "must not exceed maxInstances");
        }
        if self.idle_timeout_secs == 0 {
            fail("idleTimeoutSecs", "must be at least 1");
        }
        if self.request_timeout_secs == 0 {
            fail("requestTimeoutSecs", "must be at least 1");
        }
        if self.max_input_bytes < 2 {
            fail("maxInputBytes", "must be at least 2");
        }
        let local = match self.local {
            Some(mut local) => {
                if local.command.is_empty() || local.command[0].trim().is_empty() {
                    fail("local.command", "must name a program");
                }
                if local.start_timeout_secs == 0 {
                    fail("local.startTimeoutSecs", "must be at least 1");
                }
                if local.setup.as_ref().is_some_and(|s| s.command.is_empty()) {
                    fail("local.setup.command", "must name a program");
                }
                if local.workdir.is_relative() {
                    local.workdir = base.join(&local.workdir);
                }
                Some(local)
            }
            None => None,
        };
        if local.is_none() && self.kubernetes.is_none() {
            fail("local", "a model needs settings for at least one backend");
        }
        if let Some(kubernetes) = &self.kubernetes
            && let Err(broken) = crate::fleet::kubernetes::pod::PodSettings::parse(kubernetes)
        {
            errors.extend(broken);
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let secs_to_ms = |s: u64| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX);
        Ok(ModelSpec {
            name: self.name.unwrap_or_else(|| self.id.clone()),
            id: self.id,
            description: self.description,
            protocol: self.protocol,
            enabled: self.enabled,
            min_instances: self.min_instances,
            max_instances: self.max_instances,
            idle_timeout_ms: secs_to_ms(self.idle_timeout_secs),
            request_timeout_ms: secs_to_ms(self.request_timeout_secs),
            max_input_bytes: i64::try_from(self.max_input_bytes).unwrap_or(i64::MAX),
            local,
            kubernetes: self.kubernetes,
        })
    }
}

/// The folder that holds the example models.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/models")
}

/// The models served when none is configured: the examples.
pub fn example_models() -> Vec<ModelConfig> {
    let cog = |workdir: &str, setup: &str| LocalSpec {
        // The virtual environment's `bin` goes first on PATH: Cog's worker
        // starts `python` from PATH.
        command: vec![
            "sh".to_owned(),
            "-c".to_owned(),
            "PATH=\"$PWD/.venv/bin:$PATH\" exec python -m cog.server.http --host 127.0.0.1"
                .to_owned(),
        ],
        workdir: examples_dir().join(workdir),
        env: BTreeMap::from([(
            "COG_PREDICT_TYPE_STUB".to_owned(),
            "predict.py:Predictor".to_owned(),
        )]),
        start_timeout_secs: 120,
        setup: Some(SetupSpec {
            command: vec!["sh".to_owned(), "-c".to_owned(), setup.to_owned()],
            inputs: vec![PathBuf::from("requirements.txt")],
        }),
    };
    let venv = "rm -rf .venv && python3 -m venv .venv && .venv/bin/pip install --disable-pip-version-check -q -r requirements.txt";
    let example = |id: &str, name: &str, description: &str| ModelConfig {
        id: id.to_owned(),
        name: Some(name.to_owned()),
        description: description.to_owned(),
        protocol: Protocol::Cog,
        enabled: true,
        min_instances: 0,
        max_instances: 2,
        idle_timeout_secs: 300,
        request_timeout_secs: 60,
        max_input_bytes: 4096,
        local: Some(cog(id, venv)),
        kubernetes: None,
    };
    vec![
        example(
            "iris",
            "Iris classifier",
            "Classifies an iris flower from its sepal and petal sizes (cm): scikit-learn, packaged with Cog.",
        ),
        example(
            "sleepy",
            "Sleepy",
            "A test model: waits `seconds`, echoes `message`, fails on `fail`, kills its instance on `crash`.",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ModelConfig {
        example_models().remove(1)
    }

    #[test]
    fn examples_are_valid() {
        for model in example_models() {
            let spec = model.validate(Path::new("/")).expect("valid");
            assert!(spec.local.expect("local").workdir.is_absolute());
        }
    }

    #[test]
    fn every_broken_rule_is_reported() {
        let mut m = base();
        m.id = "Not A Slug".to_owned();
        m.min_instances = 5;
        m.max_instances = 2;
        m.idle_timeout_secs = 0;
        m.local = Some(LocalSpec {
            command: vec![],
            ..base().local.expect("local")
        });
        m.kubernetes = Some(serde_json::json!({ "image": "", "requests": { "memory": "lots" } }));
        let errors = m.validate(Path::new("/")).expect_err("invalid");
        for field in [
            "id",
            "minInstances",
            "idleTimeoutSecs",
            "local.command",
            "kubernetes.image",
            "kubernetes.requests",
        ] {
            assert!(errors.contains_key(field), "{field}: {errors:?}");
        }
    }

    #[test]
    fn kubernetes_settings_alone_make_a_model() {
        let mut m = base();
        m.local = None;
        m.kubernetes = Some(serde_json::json!({ "image": "example/sleepy:1" }));
        let spec = m.validate(Path::new("/")).expect("valid");
        assert!(spec.kubernetes.is_some());
    }

    #[test]
    fn relative_workdirs_follow_the_config_file() {
        let mut m = base();
        if let Some(local) = m.local.as_mut() {
            local.workdir = PathBuf::from("models/mine");
        }
        let spec = m.validate(Path::new("/etc/modelfleet")).expect("valid");
        assert_eq!(
            spec.local.expect("local").workdir,
            Path::new("/etc/modelfleet/models/mine")
        );
    }
}

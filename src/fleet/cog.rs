//! A client for Cog's HTTP prediction API: `GET /health-check`,
//! `POST /predictions`, `POST /predictions/{id}/cancel`.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

/// What `GET /health-check` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Starting,
    Ready,
    Busy,
    /// Setup failed; the instance will never serve. Carries Cog's logs.
    SetupFailed(String),
    Other(String),
}

/// The end of a prediction, as Cog reports it.
#[derive(Debug, Clone)]
pub struct Prediction {
    pub succeeded: bool,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub logs: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CogError {
    /// The instance could not be reached or broke the connection. The
    /// detail (addresses, OS errors) stays out of the message that reaches
    /// clients.
    #[error("the instance did not answer")]
    Transport(String),
    /// The instance answered with something that is not a prediction.
    #[error("the instance answered HTTP {status} without a prediction")]
    Protocol { status: u16, body: String },
}

#[derive(Clone)]
pub struct CogClient {
    http: reqwest::Client,
}

/// How long to keep retrying a prediction the instance refuses with 409
/// ("at capacity"): Cog sometimes says so just after the previous
/// prediction returned.
const BUSY_RETRY: Duration = Duration::from_secs(5);

impl Default for CogClient {
    fn default() -> Self {
        Self::new()
    }
}

impl CogClient {
    pub fn new() -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Self { http }
    }

    pub async fn health(&self, endpoint: &str) -> Result<Health, CogError> {
        let resp = self
            .http
            .get(format!("{endpoint}/health-check"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| CogError::Transport(e.to_string()))?;
        let body: Value = resp
            .json()
            .await
            .map_err(|e| CogError::Transport(e.to_string()))?;
        Ok(match body["status"].as_str().unwrap_or_default() {
            "STARTING" => Health::Starting,
            "READY" => Health::Ready,
            "BUSY" => Health::Busy,
            "SETUP_FAILED" => Health::SetupFailed(
                body["setup"]["logs"]
                    .as_str()
                    .unwrap_or("setup failed")
                    .to_owned(),
            ),
            other => Health::Other(other.to_owned()),
        })
    }

    /// Runs one prediction and waits for its end.
    pub async fn predict(
        &self,
        endpoint: &str,
        id: &str,
        input: &Value,
    ) -> Result<Prediction, CogError> {
        let body = json!({ "id": id, "input": input });
        let deadline = tokio::time::Instant::now() + BUSY_RETRY;
        loop {
            let resp = self
                .http
                .post(format!("{endpoint}/predictions"))
                .json(&body)
                .send()
                .await
                .map_err(|e| CogError::Transport(e.to_string()))?;
            let status = resp.status().as_u16();
            if status == 409 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let text = resp
                .text()
                .await
                .map_err(|e| CogError::Transport(e.to_string()))?;
            #[derive(Deserialize)]
            struct Answer {
                status: String,
                #[serde(default)]
                output: Option<Value>,
                #[serde(default)]
                error: Option<String>,
                #[serde(default)]
                logs: Option<String>,
            }
            return match serde_json::from_str::<Answer>(&text) {
                Ok(a) if matches!(a.status.as_str(), "succeeded" | "failed" | "canceled") => {
                    Ok(Prediction {
                        succeeded: a.status == "succeeded",
                        output: a.output,
                        error: a
                            .error
                            .or_else(|| (a.status == "canceled").then(|| "canceled".to_owned())),
                        logs: a.logs.filter(|l| !l.is_empty()),
                    })
                }
                _ => Err(CogError::Protocol {
                    status,
                    body: text.chars().take(500).collect(),
                }),
            };
        }
    }

    /// Asks the instance to cancel a prediction. Best effort.
    pub async fn cancel(&self, endpoint: &str, id: &str) {
        let _ = self
            .http
            .post(format!("{endpoint}/predictions/{id}/cancel"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
    }
}

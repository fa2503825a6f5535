//! Building and running the server. Tests use [`Application`] directly:
//! bind port 0, read the address, run until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;
use tokio::sync::watch;

use async_graphql::dataloader::DataLoader;

use crate::auth::AuthService;
use crate::config::BackendKind;
use crate::config::Config;
use crate::fleet::Fleet;
use crate::fleet::backend::Backend;
use crate::fleet::backend::EventLog;
use crate::fleet::board::InstanceBoard;
use crate::fleet::kubernetes::autoscaler::Autoscaler;
use crate::fleet::kubernetes::backend::KubernetesBackend;
use crate::fleet::leader::Election;
use crate::fleet::local::LocalBackend;
use crate::graphql::{self, AppSchema, EventsLoader, ModelLoader};
use crate::metrics::Metrics;
use crate::models::ModelRegistry;
use crate::requests::RequestService;
use crate::stats::StatsService;
use crate::stats::retention::Retention;
use crate::{db, http};

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: DatabaseConnection,
    pub auth: AuthService,
    pub models: ModelRegistry,
    pub requests: RequestService,
    pub stats: StatsService,
    pub retention: Retention,
    pub fleet: Arc<Fleet>,
    /// How this server takes its turn running the scaler.
    pub election: Election,
    pub board: Arc<InstanceBoard>,
    pub metrics: Arc<Metrics>,
    /// The node autoscaler, when enabled.
    pub autoscaler: Option<Arc<Autoscaler>>,
    pub schema: AppSchema,
    /// Turns `true` when the server begins to shut down; long-lived
    /// connections (WebSockets) watch it.
    pub shutdown: watch::Receiver<bool>,
}

/// A server that is connected, migrated and bound, not yet serving.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    shutdown_tx: watch::Sender<bool>,
}

impl Application {
    /// Connects to the database, applies migrations and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let db = db::connect(&config.database)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to the database: {e}"))?;
        db::migrate(&db, &config.database)
            .await
            .map_err(|e| anyhow::anyhow!("cannot apply migrations: {e}"))?;
        let listener = TcpListener::bind(config.server.bind)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.server.bind))?;
        let auth = AuthService::new(db.clone(), config.auth.clone()).await?;
        let models = ModelRegistry::new(db.clone());
        models
            .apply_config(&config.model_specs()?)
            .await
            .map_err(|e| anyhow::anyhow!("cannot save the configured models: {e}"))?;
        let board = Arc::new(InstanceBoard::default());
        let events = EventLog::new(db.clone(), board.clone());
        let scope = instance_scope(&config.database);
        // The servers sharing a database elect one scaler: through a Lease
        // on the cluster their pods run on, or a lock in the database.
        let mut autoscaler = None;
        let (backend, election): (Arc<dyn Backend>, Election) = match config.kubernetes.backend {
            BackendKind::Local => (
                Arc::new(LocalBackend::new(&scope, events.clone())),
                Election::Database(config.database.clone()),
            ),
            BackendKind::Kubernetes => {
                let backend =
                    KubernetesBackend::connect(&config.kubernetes, &scope, events.clone())
                        .await
                        .map_err(|e| anyhow::anyhow!("cannot reach Kubernetes: {e}"))?;
                let lease = backend.lease();
                if config.kubernetes.autoscaler.enabled {
                    autoscaler = Some(Arc::new(Autoscaler::new(
                        backend.client(),
                        config.kubernetes.autoscaler.clone(),
                        backend.placement(),
                    )));
                }
                (Arc::new(backend), Election::Lease(Box::new(lease)))
            }
        };
        let metrics = Arc::new(Metrics::new());
        let fleet = Fleet::new(
            db.clone(),
            models.clone(),
            backend,
            events,
            board.clone(),
            metrics.clone(),
        );
        let requests = RequestService::new(db.clone(), models.clone(), fleet.clone());
        let stats = StatsService::new(db.clone());
        let retention = Retention::new(db.clone(), config.retention.clone());
        let config = Arc::new(config);
        let mut schema = graphql::builder(&config.graphql);
        if let Some(autoscaler) = &autoscaler {
            schema = schema.data(autoscaler.handle());
        }
        let schema = schema
            .data(auth.clone())
            .data(db.clone())
            .data(models.clone())
            .data(requests.clone())
            .data(stats.clone())
            .data(config.clone())
            .data(board.clone())
            .data(fleet.clone())
            .data(DataLoader::new(ModelLoader(models.clone()), tokio::spawn))
            .data(DataLoader::new(EventsLoader(db.clone()), tokio::spawn))
            .finish();
        let (shutdown_tx, shutdown) = watch::channel(false);
        let state = AppState {
            config,
            db,
            auth,
            models,
            requests,
            stats,
            retention,
            fleet,
            election,
            board,
            metrics,
            autoscaler,
            schema,
            shutdown,
        };
        Ok(Self {
            listener,
            state,
            shutdown_tx,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.state.config.server.bind)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `signal` completes, then stops taking connections, tells
    /// WebSockets to close and waits up to `server.shutdown_grace_secs` for
    /// open requests.
    pub async fn run_until(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application {
            listener,
            state,
            shutdown_tx,
        } = self;
        let grace = Duration::from_secs(state.config.server.shutdown_grace_secs);
        let addr = listener.local_addr()?;
        let housekeeping = tokio::spawn(housekeeping(state.clone()));
        let retention = tokio::spawn(state.retention.clone().run(state.shutdown.clone()));
        let scaler = tokio::spawn(
            state
                .fleet
                .clone()
                .run(state.election.clone(), state.shutdown.clone()),
        );
        let autoscaler = state.autoscaler.clone().map(|autoscaler| {
            tokio::spawn(autoscaler.run(
                state.fleet.clone(),
                state.db.clone(),
                state.shutdown.clone(),
            ))
        });
        let app = http::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let graceful = async move {
            signal.await;
            tracing::info!("shutting down");
            let _ = shutdown_tx.send(true);
            let _ = stopping_tx.send(());
        };
        tracing::info!(addr = %addr, "listening");
        let server = axum::serve(listener, app).with_graceful_shutdown(graceful);
        let mut server = tokio::spawn(async move { server.await });
        let result = match stopping_rx.await {
            // Shutdown began: give open requests the grace period.
            Ok(()) => match tokio::time::timeout(grace, &mut server).await {
                Ok(joined) => joined?,
                Err(_) => {
                    server.abort();
                    tracing::warn!(
                        grace_secs = grace.as_secs(),
                        "connections still open after the grace period; exiting"
                    );
                    Ok(())
                }
            },
            // The server ended by itself (an accept error).
            Err(_) => Ok(()),
        };
        housekeeping.abort();
        retention.abort();
        // The autoscaler ends its pass (a removal under way is finished)
        // and stops at the shutdown signal.
        if let Some(mut autoscaler) = autoscaler
            && tokio::time::timeout(Duration::from_secs(5), &mut autoscaler)
                .await
                .is_err()
        {
            autoscaler.abort();
        }
        // The scaler stops its instances and re-queues their jobs.
        if tokio::time::timeout(grace + Duration::from_secs(15), scaler)
            .await
            .is_err()
        {
            tracing::warn!("instances still stopping after the grace period; exiting");
        }
        state.db.close_by_ref().await.ok();
        tracing::info!("stopped");
        Ok(result?)
    }
}

/// Periodic upkeep that belongs to no request.
async fn housekeeping(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        if let Err(e) = state.auth.housekeeping().await {
            tracing::warn!(code = e.code(), "session housekeeping failed");
        }
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Names the database a server records instances in, for the backends'
/// scope tag: its URL without the password (so that changing the password
/// does not orphan the pods a server left running) and its schema.
fn instance_scope(database: &crate::config::DatabaseConfig) -> String {
    let mut url = database.url.clone();
    if let Ok(mut parsed) = url::Url::parse(&url)
        && parsed.password().is_some()
        && parsed.set_password(None).is_ok()
    {
        url = parsed.to_string();
    }
    format!("{url}#{}", database.schema.as_deref().unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatabaseConfig;

    #[test]
    fn the_scope_leaves_out_the_password_but_not_the_schema() {
        let at = |url: &str, schema: Option<&str>| {
            instance_scope(&DatabaseConfig {
                url: url.to_owned(),
                schema: schema.map(str::to_owned),
                ..Default::default()
            })
        };
        let before = at("postgres://fleet:old@db:5432/prod", Some("a"));
        assert_eq!(before, at("postgres://fleet:new@db:5432/prod", Some("a")));
        assert!(!before.contains("old"), "{before}");
        assert_ne!(before, at("postgres://fleet:old@db:5432/prod", Some("b")));
        assert_ne!(before, at("postgres://other:old@db:5432/prod", Some("a")));
        assert_eq!(
            at("sqlite://x.db?mode=rwc", None),
            "sqlite://x.db?mode=rwc#"
        );
    }
}

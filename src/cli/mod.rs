//! The `modelfleet` command line.

mod user;

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::app::{Application, shutdown_signal};
use crate::config::Config;
use crate::{db, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "modelfleet",
    version,
    about = "Runs machine-learning models on demand behind a GraphQL API"
)]
pub struct Cli {
    /// Configuration file (default: ./modelfleet.toml if it exists).
    #[arg(long, global = true, env = "MODELFLEET_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print the GraphQL schema (SDL).
    Schema,
    /// Manage accounts.
    #[command(subcommand)]
    User(user::UserCommand),
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        let command = self.command.unwrap_or(Command::Serve);
        if let Command::Schema = command {
            let mut out = std::io::stdout().lock();
            out.write_all(crate::graphql::sdl().as_bytes())?;
            return Ok(());
        }
        let config = Config::load(self.config.as_deref())?;
        telemetry::init(&config.log);
        match command {
            Command::Serve => {
                let app = Application::build(config).await?;
                app.run_until(shutdown_signal()).await
            }
            Command::Migrate => {
                let conn = db::connect(&config.database).await?;
                db::migrate(&conn, &config.database).await?;
                tracing::info!("migrations applied");
                Ok(())
            }
            Command::User(cmd) => cmd.run(config).await,
            Command::Schema => Ok(()),
        }
    }
}

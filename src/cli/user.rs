//! `modelfleet user ...`: making accounts and admins from the command line.
//! Passwords come from standard input or a prompt, never from arguments.

use std::io::{BufRead, IsTerminal, Write};

use clap::Subcommand;

use crate::auth::signup::NewAccount;
use crate::auth::{AuthService, Role};
use crate::config::Config;
use crate::db;
use crate::error::ApiError;

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account. The password is read from standard input (first
    /// line) or, on a terminal, prompted for twice.
    Create {
        #[arg(long)]
        username: String,
        #[arg(long)]
        email: String,
        /// Grant the ADMIN role.
        #[arg(long)]
        admin: bool,
    },
    /// Grant the ADMIN role to an existing account.
    Promote {
        /// The account's username.
        username: String,
    },
}

impl UserCommand {
    pub async fn run(self, config: Config) -> anyhow::Result<()> {
        let conn = db::connect(&config.database).await?;
        db::migrate(&conn, &config.database).await?;
        let auth = AuthService::new(conn, config.auth.clone()).await?;
        let mut out = std::io::stdout().lock();
        match self {
            UserCommand::Create {
                username,
                email,
                admin,
            } => {
                let password = read_password()?;
                let roles: &[Role] = if admin { &[Role::Admin] } else { &[] };
                let account = NewAccount {
                    username,
                    email,
                    password,
                };
                let user = auth.create_user(account, roles).await.map_err(explain)?;
                writeln!(
                    out,
                    "created user {} ({}){}",
                    user.username,
                    user.id,
                    if admin { " with role ADMIN" } else { "" }
                )?;
            }
            UserCommand::Promote { username } => {
                let user = auth
                    .grant_role(&username, Role::Admin)
                    .await
                    .map_err(explain)?;
                writeln!(out, "granted ADMIN to {} ({})", user.username, user.id)?;
            }
        }
        Ok(())
    }
}

fn read_password() -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let second = rpassword::prompt_password("Repeat password: ")?;
        anyhow::ensure!(first == second, "the passwords differ");
        return Ok(first);
    }
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line)?;
    anyhow::ensure!(
        read > 0,
        "no password given: pipe it on standard input, or run on a terminal to be asked"
    );
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// Turns an API error into a message for the terminal.
fn explain(e: ApiError) -> anyhow::Error {
    match e {
        ApiError::BadUserInput(fields) => {
            let lines: Vec<String> = fields
                .iter()
                .flat_map(|(f, msgs)| msgs.iter().map(move |m| format!("  {f}: {m}")))
                .collect();
            anyhow::anyhow!("invalid account:\n{}", lines.join("\n"))
        }
        ApiError::NotFound(what) => anyhow::anyhow!("no such {what}"),
        other => anyhow::anyhow!(other.message()),
    }
}

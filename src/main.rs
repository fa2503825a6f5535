use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match modelfleet::cli::Cli::parse().run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Before logging is set up (a bad configuration) there is nowhere
            // else to say it.
            #[expect(clippy::print_stderr, reason = "the process's last word")]
            {
                eprintln!("modelfleet: {e:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

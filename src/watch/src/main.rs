//! `aiodebug-watch`: the command-line shell over `aiodebug-engine`.

mod cli;
mod demo;
mod dump;
mod exit;
mod generate;
mod out;
mod pyview;
mod status;
mod watch;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let code = run(&cli);
    // Output lost to a write error (stdout full) is a failure of a command
    // whose product is its output; a reader that went away is not.
    if code == ExitCode::SUCCESS && out::lost() {
        ExitCode::from(exit::OTHER)
    } else {
        code
    }
}

fn run(cli: &cli::Cli) -> ExitCode {
    match &cli.command {
        cli::Command::Status(a) => status::status(a),
        cli::Command::List(a) => status::list(a),
        cli::Command::Watch(a) => watch::run(a),
        cli::Command::Dump(a) => dump::run(a),
        cli::Command::Demo(a) => demo::run(a),
        cli::Command::DemoTarget => demo::target(),
        cli::Command::Generate(a) => {
            let result = match (&a.dir, a.what) {
                (Some(dir), cli::Generated::Man) => generate::write_man_pages(dir).map(|_| ()),
                _ => generate::render(a.what, &mut std::io::stdout().lock()),
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    crate::errln!("aiodebug-watch: {e}");
                    ExitCode::from(exit::OTHER)
                }
            }
        }
    }
}

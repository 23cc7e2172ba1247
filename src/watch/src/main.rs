//! `aiodebug-watch`: the command-line shell over `aiodebug-engine`.

mod cli;
mod demo;
mod dump;
mod exit;
mod generate;
mod status;
mod watch;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
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
                    eprintln!("aiodebug-watch: {e}");
                    ExitCode::from(exit::OTHER)
                }
            }
        }
    }
}

//! `aiodebug-watch`: the command-line shell over `aiodebug-engine`.

mod cause;
mod cli;
mod config;
mod demo;
mod dump;
mod exit;
mod generate;
mod out;
mod pyview;
mod status;
mod symbolize;
mod watch;

use clap::Parser as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage_error(&e),
    };
    let code = run(&cli);
    // Output lost to a write error (stdout full) is a failure of a command
    // whose product is its output; a reader that went away is not.
    if code == ExitCode::SUCCESS && out::lost() {
        ExitCode::from(exit::OTHER)
    } else {
        code
    }
}

/// Prints clap's message (help and version on stdout, errors on stderr),
/// with every line cut to a bounded length: an argument of 100 KB is not
/// echoed back whole.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let text = e.render().to_string();
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        crate::outln!("{}", text.trim_end());
        return ExitCode::SUCCESS;
    }
    for line in text.trim_end().lines() {
        let n = line.chars().count();
        if n > 240 {
            // Keep both ends: clap says why after the value it echoes.
            let head: String = line.chars().take(120).collect();
            let tail: String = line.chars().skip(n - 120).collect();
            crate::errln!(
                "{head}…[{} bytes cut]…{tail}",
                line.len() - head.len() - tail.len()
            );
        } else {
            crate::errln!("{line}");
        }
    }
    ExitCode::from(exit::USAGE)
}

fn run(cli: &cli::Cli) -> ExitCode {
    match &cli.command {
        cli::Command::Status(a) => status::status(&a.into()),
        cli::Command::List(a) => status::list(&a.into()),
        cli::Command::Watch(a) => match config::WatchConfig::try_from(a) {
            Ok(c) => watch::run(&c),
            Err(e) => {
                crate::errln!("aiodebug-watch: {e}");
                ExitCode::from(exit::USAGE)
            }
        },
        cli::Command::Dump(a) => dump::run(&a.into()),
        cli::Command::Symbolize(a) => symbolize::run(&a.into()),
        cli::Command::Demo(a) => demo::run(&a.into()),
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

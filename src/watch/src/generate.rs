//! `generate`: man page and completions from the clap definitions.

use crate::cli::{Cli, Generated};
use clap::CommandFactory;
use std::io::Write;

/// Renders the requested file into `out`.
pub fn render(what: Generated, out: &mut dyn Write) -> std::io::Result<()> {
    let mut cmd = Cli::command();
    match what {
        Generated::Man => {
            clap_mangen::Man::new(cmd.clone()).render(out)?;
            // One section per visible subcommand, so the page is complete on its own.
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                let name = format!("aiodebug-watch {}", sub.get_name());
                let sub = sub.clone().name(name.clone()).bin_name(name);
                writeln!(out, ".SH \"{}\"", sub.get_name().to_uppercase())?;
                let man = clap_mangen::Man::new(sub);
                man.render_synopsis_section(out)?;
                man.render_description_section(out)?;
                man.render_options_section(out)?;
            }
            Ok(())
        }
        Generated::CompleteBash => {
            clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "aiodebug-watch", out);
            Ok(())
        }
        Generated::CompleteZsh => {
            clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, "aiodebug-watch", out);
            Ok(())
        }
        Generated::CompleteFish => {
            clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, "aiodebug-watch", out);
            Ok(())
        }
    }
}

//! `generate`: man pages and completions from the clap definitions.

use crate::cli::{Cli, Generated};
use clap::CommandFactory;
use std::io::Write;
use std::path::Path;

/// Exit status section, in roff.
fn exit_status(out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, ".SH \"EXIT STATUS\"")?;
    writeln!(out, "The same for every subcommand:")?;
    for line in crate::cli::EXIT_CODES.lines().skip(1) {
        let line = line.trim_start();
        let (code, text) = line.split_once(' ').unwrap_or((line, ""));
        writeln!(out, ".TP\n.B {code}\n{}", text.trim().replace('-', "\\-"))?;
    }
    Ok(())
}

fn page(cmd: clap::Command, out: &mut dyn Write) -> std::io::Result<()> {
    let has_version = cmd.get_version().is_some();
    let has_subcommands = cmd.has_subcommands();
    let man = clap_mangen::Man::new(cmd);
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    if has_subcommands {
        man.render_subcommands_section(out)?;
    }
    exit_status(out)?;
    if has_version {
        man.render_version_section(out)?;
    }
    Ok(())
}

/// The main page and one page per visible subcommand: (file name, command).
fn pages() -> Vec<(String, clap::Command)> {
    let mut cmd = Cli::command();
    cmd.build();
    let mut pages = vec![("aiodebug-watch.1".to_string(), cmd.clone())];
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = format!("aiodebug-watch-{}", sub.get_name());
        let sub = sub
            .clone()
            .bin_name(format!("aiodebug-watch {}", sub.get_name()))
            .display_name(name.clone());
        pages.push((format!("{name}.1"), sub));
    }
    pages
}

/// Writes every man page into `dir`.
pub fn write_man_pages(dir: &Path) -> std::io::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (file, cmd) in pages() {
        let mut buf = Vec::new();
        page(cmd, &mut buf)?;
        std::fs::write(dir.join(&file), buf)?;
        written.push(file);
    }
    Ok(written)
}

/// Renders the requested file into `out` (for `Man`, the main page only).
pub fn render(what: Generated, out: &mut dyn Write) -> std::io::Result<()> {
    let mut cmd = Cli::command();
    let shell = match what {
        Generated::Man => {
            let (_, main) = pages().swap_remove(0);
            return page(main, out);
        }
        Generated::CompleteBash => clap_complete::Shell::Bash,
        Generated::CompleteZsh => clap_complete::Shell::Zsh,
        Generated::CompleteFish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut cmd, "aiodebug-watch", out);
    Ok(())
}

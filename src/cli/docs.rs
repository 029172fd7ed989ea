//! `completions` and `man`: the CLI describing itself, from the same clap definitions that
//! parse it, so neither can drift from the flags the binary takes.
//!
//! `man` writes one page for the whole CLI to stdout (`man -l`, or save it as
//! `droot-fleet.1`): the top-level options, then a COMMANDS section with every command and
//! subcommand (`event deploy`, `rollout pause`, ...), its synopsis, description and
//! options. `man --dir DIR` writes git-style pages instead: `droot-fleet.1` listing the
//! commands, and one page per command (`droot-fleet-event-deploy.1`). Hidden flags and
//! commands stay hidden; the global `--log` is described once, at the top.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, CommandFactory as _};
use clap_mangen::Man;

use super::Cli;

/// Flags of `droot-fleet completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Flags of `droot-fleet man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write one page per command into DIR (droot-fleet.1, droot-fleet-deploy.1,
    /// droot-fleet-event-deploy.1, ...) instead of the single page to stdout.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// The name the scripts complete and the pages are titled with.
const BIN: &str = "droot-fleet";

/// Prints the completion script for the shell.
pub fn completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    // Into memory first: the generator panics on a write error (a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), BIN, &mut script);
    let mut out = io::stdout().lock();
    (out.write_all(&script).and_then(|()| out.flush()))
        .context("writing the completion script to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// Prints the one-page manual, or writes a page per command into `--dir`.
pub fn man(args: ManArgs) -> anyhow::Result<ExitCode> {
    let cmd = Cli::command().disable_help_subcommand(true);
    if let Some(dir) = args.dir {
        crate::dirs::create_dir_all_mode(&dir, 0o755, 0o755)
            .with_context(|| format!("creating {}", dir.display()))?;
        clap_mangen::generate_to(cmd, &dir)
            .with_context(|| format!("writing man pages into {}", dir.display()))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = io::BufWriter::new(io::stdout().lock());
    single_page(cmd, &mut out)
        .and_then(|()| out.flush())
        .context("writing the man page to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// The whole CLI in one page: the top-level sections, then every command under COMMANDS.
fn single_page(mut cmd: clap::Command, out: &mut dyn Write) -> io::Result<()> {
    cmd.build();
    let man = Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    writeln!(out, ".SH COMMANDS")?;
    let mut subcommands = Vec::new();
    collect_subcommands(&cmd, &mut subcommands);
    for sub in subcommands {
        command_entry(sub, out)?;
    }
    man.render_version_section(out)
}

/// Every visible command below `cmd`, depth first, in the order `--help` lists them.
fn collect_subcommands<'a>(cmd: &'a clap::Command, into: &mut Vec<&'a clap::Command>) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        into.push(sub);
        collect_subcommands(sub, into);
    }
}

/// One command as a subsection: its full name, description, synopsis and options. The
/// global options are left out (the top of the page has them).
fn command_entry(sub: &clap::Command, out: &mut dyn Write) -> io::Result<()> {
    let name = sub
        .get_bin_name()
        .unwrap_or_else(|| sub.get_name())
        .to_owned();
    let sub = (sub.clone()).mut_args(|a| if a.is_global_set() { a.hide(true) } else { a });
    let has_options = sub.get_arguments().any(|a| !a.is_hide_set());
    let man = Man::new(sub);
    let mut body = Vec::new();
    man.render_description_section(&mut body)?;
    man.render_synopsis_section(&mut body)?;
    if has_options {
        man.render_options_section(&mut body)?;
    }
    writeln!(out, ".SS \"{}\"", name.replace('"', ""))?;
    for line in String::from_utf8_lossy(&body).lines() {
        // The page's own sections become paragraphs of this subsection.
        match line.strip_prefix(".SH ") {
            Some("DESCRIPTION") => {}
            Some(heading) => writeln!(out, ".PP\n\\fI{}:\\fR", title_case(heading))?,
            None => writeln!(out, "{line}")?,
        }
    }
    Ok(())
}

/// `OPTIONS` → `Options`.
fn title_case(heading: &str) -> String {
    let lower = heading.trim_matches('"').to_lowercase();
    let mut chars = lower.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

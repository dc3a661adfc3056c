//! `wwctl genconfig`: documents generated from the code, so they cannot drift from it.
//!
//! Warewulf's `genconfig man DIR` and `genconfig reference DIR` (its command reference)
//! keep their names; `completions SHELL` is Warewulf's `wwctl completion SHELL` (cobra's)
//! moved here beside the other generated files.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{CommandFactory, Subcommand, ValueEnum};

#[derive(Subcommand, Debug)]
pub enum GenconfigCmd {
    /// Print a shell completion script (e.g. `wwctl genconfig completions bash >
    /// /etc/bash_completion.d/wwctl`).
    #[command(alias = "completion")]
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Write a man page per command (wwctl.1, wwctl-node.1, wwctl-node-add.1, ...) into DIR.
    Man {
        /// Directory to write into (created if missing).
        dir: PathBuf,
    },
    /// Write the command reference (Markdown, one file per command) into DIR.
    Reference {
        /// Directory to write into (created if missing).
        dir: PathBuf,
    },
}

/// The shells `completions` writes for.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

pub fn run(cmd: GenconfigCmd, out: &mut dyn Write) -> Result<()> {
    let mut top = super::Cli::command();
    match cmd {
        GenconfigCmd::Completions { shell } => {
            let mut buf = Vec::new();
            match shell {
                Shell::Bash => clap_complete::generate(clap_complete::Shell::Bash, &mut top, "wwctl", &mut buf),
                Shell::Zsh => clap_complete::generate(clap_complete::Shell::Zsh, &mut top, "wwctl", &mut buf),
                Shell::Fish => clap_complete::generate(clap_complete::Shell::Fish, &mut top, "wwctl", &mut buf),
            }
            out.write_all(&buf)?;
        }
        GenconfigCmd::Man { dir } => {
            create_dir(&dir)?;
            let n = man_pages(top, &dir)?;
            writeln!(out, "Wrote {n} man pages to {}", dir.display())?;
        }
        GenconfigCmd::Reference { dir } => {
            create_dir(&dir)?;
            top.build();
            let mut n = 0;
            reference(&mut top, "wwctl", &dir, &mut n)?;
            writeln!(out, "Wrote {n} reference pages to {}", dir.display())?;
        }
    }
    Ok(())
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// One page per visible command, named by its path (`wwctl-node-add.1`).
fn man_pages(top: clap::Command, dir: &Path) -> Result<usize> {
    fn walk(cmd: clap::Command, dir: &Path, n: &mut usize) -> Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
            walk(sub, dir, n)?;
        }
        let path = clap_mangen::Man::new(cmd)
            .title("WWCTL")
            .section("1")
            .manual("wulfpack")
            .generate_to(dir)
            .with_context(|| format!("writing a man page into {}", dir.display()))?;
        tracing::debug!(page = %path.display(), "man page");
        *n += 1;
        Ok(())
    }
    let mut top = top.disable_help_subcommand(true);
    top.build();
    let mut n = 0;
    walk(top, dir, &mut n)?;
    Ok(n)
}

/// `wwctl_node_add.md`: the command's name, its long help as clap prints it, and links
/// to its subcommands' pages (Warewulf's reference is a tree of pages the same way).
fn reference(cmd: &mut clap::Command, path: &str, dir: &Path, n: &mut usize) -> Result<()> {
    let file = dir.join(format!("{}.md", path.replace(' ', "_")));
    let mut text = format!("# {path}\n\n");
    if let Some(about) = cmd.get_about() {
        text.push_str(&format!("{about}\n\n"));
    }
    text.push_str("```text\n");
    text.push_str(&cmd.render_long_help().to_string());
    text.push_str("```\n");
    let subs: Vec<String> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .map(|s| s.get_name().to_owned())
        .collect();
    if !subs.is_empty() {
        text.push_str("\n## Subcommands\n\n");
        for s in &subs {
            let p = format!("{path} {s}");
            text.push_str(&format!("- [{p}]({}.md)\n", p.replace(' ', "_")));
        }
    }
    std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    *n += 1;
    for s in subs {
        let sub = cmd.find_subcommand_mut(&s).expect("listed above");
        reference(sub, &format!("{path} {s}"), dir, n)?;
    }
    Ok(())
}

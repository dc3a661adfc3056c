//! The part of iPXE's script language that boot scripts use, interpreted the way iPXE
//! does, without I/O: the interpreter stops at each download or `boot` and is told
//! whether it worked.
//!
//! Why interpret rather than pick URLs out of the text: the head's scripts (and a site's
//! own templates) encode the fallback policy in the script — `kernel URL1 && goto ok ||
//! echo failed`, one line per head, `goto error_reboot` when all fail, overlays skipped
//! when every head refuses them. Running the script is the only way to fall back exactly
//! as a node would.
//!
//! What is modelled (iPXE's `exec.c`, `parse.c`, `settings.c`):
//! - **Lines** are expanded (`${name}`, `${name:type}`, innermost first; unknown settings
//!   are empty; `:uristring` percent-encodes) and then split into words on whitespace,
//!   with `"…"`/`'…'` quoting; a word starting with `#` starts a comment.
//! - **`&&`, `||`, `;`** separate commands: the next command runs if the last one that
//!   ran succeeded (`&&`), failed (`||`), or always (`;`); the status of a skipped command
//!   is that of the last one run. `goto` ends the line.
//! - **Commands**: `set`/`clear`, `echo`, `iseq`, `isset`, `goto`, `:label`, `sleep` and
//!   `prompt` (no waiting: a simulated node has nobody to wait for), `imgfree`,
//!   `dhcp`/`ifopen`/`ifconf` (already done), downloads (`kernel`, `initrd`, `imgextract`,
//!   `imgfetch`, `module`, `imgload`, with `--name`/`-n`, `--timeout`/`-t`,
//!   `--autofree`/`-a`, `--replace`/`-r`), `boot`, and `reboot`/`poweroff`/`exit`/`shell`,
//!   which end the script as a failed boot. Anything else fails, as an unknown command does.
//! - **Bounded**: at most [`MAX_STEPS`] commands run (a `goto` loop is cut there).

use std::collections::{BTreeMap, HashMap};

/// Commands run before a script is cut off as looping.
pub const MAX_STEPS: u32 = 10_000;

/// Where the interpreter stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Download `url` (a `kernel`, `initrd`, … command); call [`Script::complete`] with
    /// the outcome before the next [`Script::step`].
    Fetch {
        /// The command (`kernel`, `initrd`, `imgextract`, …).
        verb: String,
        /// `--name`, else the URL's last path segment.
        name: String,
        url: String,
    },
    /// `boot`: the script handed over to the kernel; `images` are the images loaded.
    Boot { args: Vec<String>, images: Vec<String> },
    /// The script ended without booting.
    Stop(Stop),
}

/// Why a script ended without `boot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// `reboot`, `poweroff`, `exit` or `shell` (the error path of a script).
    Command(String),
    /// The last line was run.
    End,
    /// [`MAX_STEPS`] commands ran.
    Looping,
}

/// A script being run.
#[derive(Debug)]
pub struct Script {
    lines: Vec<String>,
    labels: HashMap<String, usize>,
    vars: BTreeMap<String, String>,
    /// Next line to run.
    pc: usize,
    /// Words of the current line still to run, and whether the next command runs.
    pending: Vec<Vec<String>>,
    separators: Vec<String>,
    process: bool,
    /// Status of the last command run (true: success).
    rc: bool,
    steps: u32,
    /// Loaded images by name (kernel first).
    images: Vec<(String, String)>,
    /// A download waiting for [`Script::complete`].
    awaiting: Option<(String, String)>,
    /// Lines echoed (for reports).
    pub echoed: Vec<String>,
}

/// Percent-encoding of iPXE's `:uristring` (unreserved characters kept).
fn uristring(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl Script {
    /// A script (its text as served) with the node's settings (`mac`, `uuid`,
    /// `platform`, …; names as iPXE's, without scope).
    pub fn new(text: &str, settings: BTreeMap<String, String>) -> Script {
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let labels = lines
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                l.trim()
                    .strip_prefix(':')
                    .map(|n| (n.split_whitespace().next().unwrap_or("").to_owned(), i))
            })
            .collect();
        Script {
            lines,
            labels,
            vars: settings,
            pc: 0,
            pending: Vec::new(),
            separators: Vec::new(),
            process: true,
            rc: true,
            steps: 0,
            images: Vec::new(),
            awaiting: None,
            echoed: Vec::new(),
        }
    }

    /// A setting as the script would see it.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// Expand `${…}` references, innermost first (as iPXE's `expand_settings`).
    pub fn expand(&self, line: &str) -> String {
        let mut s = line.to_owned();
        // Each pass removes one reference; a line has few. Bounded by its length.
        for _ in 0..s.len() + 1 {
            let Some(start) = s.find("${") else { break };
            // The innermost: the last `${` before the first `}` after `start`.
            let Some(close_rel) = s[start..].find('}') else { break };
            let close = start + close_rel;
            let open = s[..close].rfind("${").unwrap_or(start);
            let inner = &s[open + 2..close];
            let (name, ty) = match inner.split_once(':') {
                Some((n, t)) => (n, Some(t)),
                None => (inner, None),
            };
            // `net0/mac` and `netX/…`: scoped settings of the boot interface.
            let key = name.rsplit('/').next().unwrap_or(name);
            let val = self.vars.get(key).cloned().unwrap_or_default();
            let val = match ty {
                Some("uristring") => uristring(&val),
                _ => val,
            };
            s.replace_range(open..=close, &val);
        }
        s
    }

    /// Split an expanded line into words (quotes group, `#` at a word's start comments).
    fn words(line: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = String::new();
        let mut in_word = false;
        let mut quote: Option<char> = None;
        for c in line.chars() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => cur.push(c),
                None => match c {
                    '"' | '\'' => {
                        quote = Some(c);
                        in_word = true;
                    }
                    '#' if !in_word => break,
                    c if c.is_whitespace() => {
                        if in_word {
                            out.push(std::mem::take(&mut cur));
                            in_word = false;
                        }
                    }
                    c => {
                        cur.push(c);
                        in_word = true;
                    }
                },
            }
        }
        if in_word {
            out.push(cur);
        }
        out
    }

    /// Load the next line's commands; false at the end of the script.
    fn load_line(&mut self) -> bool {
        while self.pc < self.lines.len() {
            let line = self.lines[self.pc].clone();
            self.pc += 1;
            if line.trim_start().starts_with(':') {
                continue;
            }
            let words = Self::words(&self.expand(&line));
            if words.is_empty() {
                continue;
            }
            let mut cmds = vec![Vec::new()];
            let mut seps = Vec::new();
            for w in words {
                if matches!(w.as_str(), "&&" | "||" | ";") {
                    seps.push(w);
                    cmds.push(Vec::new());
                } else {
                    cmds.last_mut().expect("one command").push(w);
                }
            }
            self.pending = cmds;
            self.pending.reverse();
            self.separators = seps;
            self.separators.reverse();
            self.process = true;
            return true;
        }
        false
    }

    /// Decide whether the command after the one just finished runs.
    fn after_command(&mut self) {
        match self.separators.pop().as_deref() {
            Some("&&") => self.process = self.rc,
            Some("||") => self.process = !self.rc,
            Some(_) => self.process = true,
            None => self.pending.clear(),
        }
    }

    /// Run until the next download, `boot` or the end.
    pub fn step(&mut self) -> Op {
        assert!(self.awaiting.is_none(), "complete() the last Fetch first");
        loop {
            let Some(cmd) = self.pending.pop() else {
                if !self.load_line() {
                    return Op::Stop(Stop::End);
                }
                continue;
            };
            if !self.process || cmd.is_empty() {
                self.after_command();
                continue;
            }
            self.steps += 1;
            if self.steps > MAX_STEPS {
                return Op::Stop(Stop::Looping);
            }
            let args = &cmd[1..];
            match cmd[0].as_str() {
                "echo" => {
                    let text: Vec<&str> = args.iter().map(String::as_str).filter(|a| *a != "-n").collect();
                    self.echoed.push(text.join(" "));
                    self.rc = true;
                }
                "set" => {
                    if let Some((name, val)) = args.split_first() {
                        let key = name.rsplit('/').next().unwrap_or(name).to_owned();
                        self.vars.insert(key, val.join(" "));
                        self.rc = true;
                    } else {
                        self.rc = false;
                    }
                }
                "clear" => {
                    for a in args {
                        self.vars.remove(a.rsplit('/').next().unwrap_or(a));
                    }
                    self.rc = !args.is_empty();
                }
                "iseq" => self.rc = args.len() == 2 && args[0] == args[1],
                "isset" => self.rc = args.len() == 1 && !args[0].is_empty(),
                "sleep" | "prompt" | "dhcp" | "ifopen" | "ifconf" | "ifstat" | "route" | "cpuid" => self.rc = true,
                "imgfree" => {
                    match args.first() {
                        Some(n) => self.images.retain(|(name, _)| name != n),
                        None => self.images.clear(),
                    }
                    self.rc = true;
                }
                "goto" => match args.first().and_then(|l| self.labels.get(l.as_str())) {
                    Some(&line) => {
                        self.pc = line + 1;
                        self.pending.clear();
                        self.separators.clear();
                        self.rc = true;
                        continue;
                    }
                    None => self.rc = false,
                },
                "reboot" | "poweroff" | "exit" | "shell" => {
                    return Op::Stop(Stop::Command(cmd[0].clone()));
                }
                "kernel" | "initrd" | "imgextract" | "imgfetch" | "module" | "imgload" | "imgselect" => {
                    match download_args(args) {
                        Some((name, url)) => {
                            let name = name.unwrap_or_else(|| {
                                url.split('?')
                                    .next()
                                    .unwrap_or("")
                                    .rsplit('/')
                                    .next()
                                    .unwrap_or("")
                                    .to_owned()
                            });
                            self.awaiting = Some((cmd[0].clone(), name.clone()));
                            return Op::Fetch {
                                verb: cmd[0].clone(),
                                name,
                                url,
                            };
                        }
                        None => self.rc = false,
                    }
                }
                "boot" | "imgexec" => {
                    let has_kernel = self.images.iter().any(|(_, verb)| verb == "kernel");
                    if has_kernel {
                        return Op::Boot {
                            args: args.to_vec(),
                            images: self.images.iter().map(|(n, _)| n.clone()).collect(),
                        };
                    }
                    // Nothing to boot: the command fails and the script goes on.
                    self.rc = false;
                }
                _ => self.rc = false,
            }
            self.after_command();
        }
    }

    /// The outcome of the download [`Script::step`] returned.
    pub fn complete(&mut self, ok: bool) {
        let Some((verb, name)) = self.awaiting.take() else {
            return;
        };
        if ok {
            self.images.retain(|(n, _)| *n != name);
            self.images.push((name, verb));
        }
        self.rc = ok;
        self.after_command();
    }
}

/// A download command's `--name` and URL (the first non-option word); the words after
/// the URL are the image's command line.
fn download_args(args: &[String]) -> Option<(Option<String>, String)> {
    let mut name = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--name" | "-n" => name = Some(it.next()?.clone()),
            "--timeout" | "-t" => {
                it.next()?;
            }
            "--autofree" | "-a" | "--replace" | "-r" => {}
            s if s.starts_with("--name=") => name = Some(s["--name=".len()..].to_owned()),
            s if s.starts_with("--timeout=") => {}
            s if s.starts_with('-') && s.len() > 1 => return None,
            url => return Some((name, url.to_owned())),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN: &str = include_str!("../../tests/golden/ipxe_default.txt");

    fn settings() -> BTreeMap<String, String> {
        [
            ("platform", "pcbios"),
            ("uuid", "0000-11"),
            ("asset", ""),
            ("mac", "aa:bb:cc:dd:ee:01"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// Run a script, answering each download with `ok(name, url)`; the downloads tried
    /// and how it ended.
    fn run(text: &str, mut ok: impl FnMut(&str, &str) -> bool) -> (Vec<(String, String)>, Op) {
        let mut s = Script::new(text, settings());
        let mut tried = Vec::new();
        loop {
            match s.step() {
                Op::Fetch { name, url, .. } => {
                    let r = ok(&name, &url);
                    tried.push((name, url));
                    s.complete(r);
                }
                end => return (tried, end),
            }
        }
    }

    #[test]
    fn the_default_script_downloads_from_the_first_head_and_boots() {
        let (tried, end) = run(GOLDEN, |_, _| true);
        let names: Vec<&str> = tried.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["kernel", "image", "system", "runtime"]);
        assert_eq!(
            tried[0].1,
            "http://head1.lab:9870/kernel/aa:bb:cc:dd:ee:01?assetkey=&uuid=0000-11"
        );
        // BIOS: `initrd` (imgextract is for EFI), and the compress flag after the params.
        assert_eq!(
            tried[1].1,
            "http://head1.lab:9870/image/aa:bb:cc:dd:ee:01?assetkey=&uuid=0000-11&compress=gz"
        );
        match end {
            Op::Boot { args, images } => {
                assert_eq!(images, ["kernel", "image", "system", "runtime"]);
                assert_eq!(
                    args.join(" "),
                    "kernel initrd=image initrd=system initrd=runtime wwid=aa:bb:cc:dd:ee:01 quiet crashkernel=no"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failing_head_falls_back_to_the_next_and_refused_overlays_are_skipped() {
        // Head 1 fails everything; every head refuses the runtime overlay (secure mode).
        let (tried, end) = run(GOLDEN, |name, url| {
            !url.starts_with("http://head1") && name != "runtime"
        });
        let seq: Vec<String> = tried.iter().map(|(n, u)| format!("{n}@{}", &u[7..12])).collect();
        assert_eq!(
            seq,
            [
                "kernel@head1",
                "kernel@10.9.",
                "image@head1",
                "image@10.9.",
                "system@head1",
                "system@10.9.",
                "runtime@head1",
                "runtime@10.9."
            ]
        );
        match end {
            Op::Boot { args, images } => {
                assert_eq!(images, ["kernel", "image", "system"]);
                assert!(!args.iter().any(|a| a == "initrd=runtime"), "{args:?}");
                assert!(args.iter().any(|a| a == "initrd=system"), "{args:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_kernel_anywhere_ends_in_the_error_path() {
        let (tried, end) = run(GOLDEN, |name, _| name != "kernel");
        assert_eq!(tried.len(), 2, "one try per head, then goto error_reboot");
        assert_eq!(end, Op::Stop(Stop::Command("reboot".into())));
    }

    #[test]
    fn efi_tries_imgextract_then_initrd() {
        let mut s = Script::new(GOLDEN, settings());
        s.vars.insert("platform".into(), "efi".into());
        let mut verbs = Vec::new();
        loop {
            match s.step() {
                Op::Fetch { verb, name, .. } => {
                    let ok = !(name == "image" && verb == "imgextract");
                    verbs.push(format!("{verb}:{name}"));
                    s.complete(ok);
                }
                Op::Boot { .. } => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            verbs,
            [
                "kernel:kernel",
                "imgextract:image",
                "imgextract:image",
                "initrd:image",
                "initrd:system",
                "initrd:runtime"
            ]
        );
    }

    #[test]
    fn separators_expansion_and_quotes_follow_ipxe() {
        let s = Script::new("", settings());
        assert_eq!(
            s.expand("a=${asset:uristring}&m=${net0/mac:uristring}"),
            "a=&m=aa%3Abb%3Acc%3Add%3Aee%3A01"
        );
        assert_eq!(s.expand("${x${platform}}"), "", "innermost first; unknown is empty");
        assert_eq!(Script::words("echo \"a  b\" 'c' # rest"), ["echo", "a  b", "c"]);
        // `false || set x 1 && set y 2`: the status of a skipped command is the last run.
        let mut s = Script::new(
            "nope || set x 1 && set y 2\nset z ${x}${y}\niseq a b && set w 1 || set w 0\n",
            settings(),
        );
        assert_eq!(s.step(), Op::Stop(Stop::End));
        assert_eq!(s.var("z"), Some("12"));
        assert_eq!(s.var("w"), Some("0"));
    }

    #[test]
    fn a_goto_loop_is_cut_off() {
        let (_, end) = run(":top\necho spin\ngoto top\n", |_, _| true);
        assert_eq!(end, Op::Stop(Stop::Looping));
    }
}

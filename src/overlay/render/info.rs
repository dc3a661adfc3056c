//! `wwctl overlay info`: what a template documents about itself.
//!
//! A template describes itself in Tera comments, one item per line:
//!
//! ```text
//! {#- wwdoc: What the file configures, for whom. -#}
//! {#- wwvar: .Tags.gpuMigProfiles | | string | What the tag holds -#}
//! ```
//!
//! `wwdoc:` lines are the description (joined with spaces); `wwvar:` lines are the
//! variables the template reads: VARIABLE | OPTION (the `wwctl` flag that sets it, if any)
//! | TYPE | HELP. Warewulf keeps the same facts in Go template comments; the table is
//! printed as `wwctl overlay info` prints it there.

/// A template's own documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateInfo {
    pub description: String,
    pub variables: Vec<Variable>,
}

/// One documented variable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Variable {
    pub name: String,
    pub option: String,
    pub kind: String,
    pub help: String,
}

/// The `wwdoc:` and `wwvar:` lines of `text`'s comments.
pub fn template_info(text: &str) -> TemplateInfo {
    let mut info = TemplateInfo::default();
    let mut rest = text;
    while let Some(start) = rest.find("{#") {
        let body = &rest[start + 2..];
        let Some(end) = body.find("#}") else { break };
        let comment = body[..end].trim_start_matches('-').trim_end_matches('-');
        for line in comment.lines() {
            let line = line.trim();
            if let Some(d) = line.strip_prefix("wwdoc:") {
                if !info.description.is_empty() {
                    info.description.push(' ');
                }
                info.description.push_str(d.trim());
            } else if let Some(v) = line.strip_prefix("wwvar:") {
                let mut f = v.splitn(4, '|').map(str::trim);
                info.variables.push(Variable {
                    name: f.next().unwrap_or_default().to_owned(),
                    option: f.next().unwrap_or_default().to_owned(),
                    kind: f.next().unwrap_or_default().to_owned(),
                    help: f.next().unwrap_or_default().to_owned(),
                });
            }
        }
        rest = &body[end + 2..];
    }
    info
}

/// The variables as a table: a blank line, the header, dashes under each heading, one
/// row per variable; columns padded to the widest cell plus two spaces, the last one not.
pub fn variables_table(vars: &[Variable]) -> String {
    let head = ["VARIABLE", "OPTION", "TYPE", "HELP"];
    let rows: Vec<[&str; 4]> = vars
        .iter()
        .map(|v| [v.name.as_str(), v.option.as_str(), v.kind.as_str(), v.help.as_str()])
        .collect();
    let widths: Vec<usize> = (0..3)
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len())
                .chain([head[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: [&str; 4]| {
        let mut s = String::new();
        for (c, w) in widths.iter().enumerate() {
            s.push_str(&format!("{:<w$}  ", cells[c], w = w));
        }
        s.push_str(cells[3]);
        s.trim_end().to_owned() + "\n"
    };
    let dashes: Vec<String> = head.iter().map(|h| "-".repeat(h.len())).collect();
    let mut out = String::from("\n");
    out.push_str(&line(head));
    out.push_str(&line([&dashes[0], &dashes[1], &dashes[2], &dashes[3]]));
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_and_variables_come_from_comments() {
        let t = "{#- wwdoc: First part.\n    wwdoc: Second part.\n    wwvar: .Tags.a | --tagadd | string | The a tag -#}\nbody {{ x }}\n{# wwvar: .Kernel.Args | --kernelargs | list | Arguments #}";
        let i = template_info(t);
        assert_eq!(i.description, "First part. Second part.");
        assert_eq!(i.variables.len(), 2);
        assert_eq!(i.variables[0].option, "--tagadd");
        assert_eq!(i.variables[1].name, ".Kernel.Args");
        assert_eq!(template_info("no comments {{ here }}"), TemplateInfo::default());
    }

    #[test]
    fn the_table_pads_columns_like_warewulf() {
        let vars = vec![Variable {
            name: ".Tags.x".into(),
            option: String::new(),
            kind: "string".into(),
            help: "Help text".into(),
        }];
        assert_eq!(
            variables_table(&vars),
            "\nVARIABLE  OPTION  TYPE    HELP\n--------  ------  ----    ----\n.Tags.x           string  Help text\n"
        );
    }
}

//! Templates in EMQX's `${…}` syntax, for the source's partition key and the sink's topic:
//! literal text with placeholders such as `${topic}`, `${payload.device.id}` or
//! `${user_property.site}`. Parsed (and checked against what the side offers) when the config is
//! validated; rendered per message.

use serde_json::Value;

/// A placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Var {
    /// The MQTT topic (source).
    Topic,
    /// The message's QoS (source).
    Qos,
    /// The whole payload as text.
    Payload,
    /// A field of the payload read as JSON, by path.
    Field(Vec<String>),
    /// An MQTT 5 user property (source).
    UserProperty(String),
    /// The record's partition key (sink).
    Key,
    /// The stream's name (sink).
    Stream,
}

/// Which side a template is for: what it may refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Source,
    Sink,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(Var),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses `s`; errors say what is wrong and where, for the option `field`.
    pub fn parse(s: &str, side: Side, field: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        let mut offset = 0;
        while let Some(i) = rest.find("${") {
            if i > 0 {
                parts.push(Part::Text(rest[..i].to_owned()));
            }
            let after = &rest[i + 2..];
            let Some(end) = after.find('}') else {
                return Err(format!("{field}: '${{' at byte {} is not closed by '}}'", offset + i));
            };
            let name = after[..end].trim();
            let var = parse_var(name, side)
                .map_err(|e| format!("{field}: placeholder ${{{name}}} at byte {}: {e}", offset + i))?;
            parts.push(Part::Var(var));
            offset += i + 2 + end + 1;
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template { parts })
    }

    /// Whether the template is exactly one placeholder.
    pub fn only(&self) -> Option<&Var> {
        match self.parts.as_slice() {
            [Part::Var(v)] => Some(v),
            _ => None,
        }
    }

    /// The literal text of the template (placeholders left out).
    pub fn text(&self) -> String {
        self.render(|_, _| {})
    }

    /// Whether rendering needs the payload parsed as JSON.
    pub fn uses_fields(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Var(Var::Field(_))))
    }

    /// Renders with `value` giving each placeholder's text.
    pub fn render(&self, mut value: impl FnMut(&Var, &mut String)) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => value(v, &mut out),
            }
        }
        out
    }
}

fn parse_var(name: &str, side: Side) -> Result<Var, String> {
    let (head, path) = match name.split_once('.') {
        Some((h, p)) => (h, Some(p)),
        None => (name, None),
    };
    let var = match (head, path) {
        ("payload", None) => Var::Payload,
        ("payload", Some(p)) => {
            let segs: Vec<String> = p.split('.').map(str::to_owned).collect();
            if segs.iter().any(String::is_empty) {
                return Err("an empty field name in the path".into());
            }
            Var::Field(segs)
        }
        ("topic", None) if side == Side::Source => Var::Topic,
        ("qos", None) if side == Side::Source => Var::Qos,
        ("user_property", Some(p)) if side == Side::Source && !p.is_empty() => Var::UserProperty(p.to_owned()),
        ("key", None) if side == Side::Sink => Var::Key,
        ("stream", None) if side == Side::Sink => Var::Stream,
        _ => {
            let offered = match side {
                Side::Source => "topic, qos, payload, payload.<field>, user_property.<name>",
                Side::Sink => "key, stream, payload, payload.<field>",
            };
            return Err(format!("unknown; this template offers {offered}"));
        }
    };
    Ok(var)
}

/// Appends a JSON value found by `path` in `doc`: strings as they are, other scalars and
/// structures as JSON text, a missing field or null as nothing.
pub(crate) fn push_field(doc: Option<&Value>, path: &[String], out: &mut String) {
    let mut v = match doc {
        Some(v) => v,
        None => return,
    };
    for seg in path {
        v = match v {
            Value::Object(m) => match m.get(seg) {
                Some(x) => x,
                None => return,
            },
            Value::Array(a) => match seg.parse::<usize>().ok().and_then(|i| a.get(i)) {
                Some(x) => x,
                None => return,
            },
            _ => return,
        };
    }
    match v {
        Value::Null => {}
        Value::String(s) => out.push_str(s),
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render_source(t: &Template, topic: &str, payload: &Value) -> String {
        t.render(|v, out| match v {
            Var::Topic => out.push_str(topic),
            Var::Field(p) => push_field(Some(payload), p, out),
            Var::Qos => out.push('1'),
            _ => {}
        })
    }

    #[test]
    fn parses_and_renders() {
        let t = Template::parse("${topic}", Side::Source, "key_template").unwrap();
        assert_eq!(t.only(), Some(&Var::Topic));
        assert!(!t.uses_fields());
        let t = Template::parse("dev-${payload.device.id}/${ qos }:${payload.tags.1}", Side::Source, "k").unwrap();
        assert!(t.uses_fields());
        let p = json!({"device": {"id": 42}, "tags": ["a", "b"]});
        assert_eq!(render_source(&t, "x", &p), "dev-42/1:b");
        // Missing fields and null render as nothing; strings without quotes.
        let t = Template::parse("${payload.nope}|${payload.n}|${payload.s}", Side::Source, "k").unwrap();
        assert_eq!(render_source(&t, "x", &json!({"n": null, "s": "txt"})), "||txt");
        let t = Template::parse("plain", Side::Sink, "topic").unwrap();
        assert_eq!(t.render(|_, _| {}), "plain");
        let t = Template::parse("out/${key}/${stream}", Side::Sink, "topic").unwrap();
        assert_eq!(
            t.render(|v, o| o.push_str(if *v == Var::Key { "k1" } else { "s" })),
            "out/k1/s"
        );
    }

    #[test]
    fn errors_name_the_field_and_the_place() {
        let e = Template::parse("a/${topic", Side::Source, "key_template").unwrap_err();
        assert!(e.starts_with("key_template: '${' at byte 2 is not closed"), "{e}");
        let e = Template::parse("x${clientid}", Side::Source, "key_template").unwrap_err();
        assert!(e.contains("${clientid} at byte 1: unknown"), "{e}");
        let e = Template::parse("${topic}", Side::Sink, "topic").unwrap_err();
        assert!(e.starts_with("topic: placeholder ${topic}"), "{e}");
        assert!(e.contains("key, stream"), "{e}");
        assert!(Template::parse("${payload.a..b}", Side::Sink, "topic").is_err());
        assert!(Template::parse("${key}", Side::Source, "key_template").is_err());
    }
}

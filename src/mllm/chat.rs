//! Tokenizer and chat template from a model folder (or a GGUF file's metadata). Chat templates are the
//! Jinja strings transformers uses (`chat_template.jinja`, or `chat_template` in `tokenizer_config.json`),
//! rendered with minijinja configured as transformers configures Jinja2: `trim_blocks` and
//! `lstrip_blocks` on, loop controls (`break`/`continue`), Python's string and dict methods
//! (`.strip()`, `.upper()`, `.items()` … from minijinja-contrib's pycompat), a `tojson` that writes what
//! Python's `json.dumps` writes, and the globals `raise_exception` and `strftime_now`; `messages`,
//! `add_generation_prompt`, `bos_token` and `eos_token` are passed. A message's content is text, or a
//! list of parts (`{"type": "image"}`, `{"type": "text", "text": …}`) for templates of vision models.
//! The golden test renders real templates' formats with transformers' `apply_chat_template`
//! (scripts/make_chat_template_goldens.py).
use super::{MllmError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// One piece of a multimodal message.
#[derive(Debug, Clone, PartialEq)]
pub enum ContentPart {
    Image,
    Text(String),
}

/// A message whose content is a list of parts (what vision models' templates iterate over).
#[derive(Debug, Clone, PartialEq)]
pub struct PartsMessage {
    pub role: String,
    pub parts: Vec<ContentPart>,
}

/// The text of one user turn in the pipeline's prompts: `{image}` is where the image goes.
pub const USER_TURN: &str = "{image}\nQuestion: {question}\nOptions: {options}";

#[derive(Debug, Clone)]
pub struct ChatTemplate {
    pub source: String,
    pub bos_token: String,
    pub eos_token: String,
}

/// `dir/tokenizer.json`.
pub fn load_tokenizer(dir: &Path) -> Result<tokenizers::Tokenizer> {
    let p = dir.join("tokenizer.json");
    tokenizers::Tokenizer::from_file(&p).map_err(|e| MllmError::Tokenizer(format!("{}: {e}", p.display())))
}

fn token_text(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Object(o)) => o.get("content").and_then(|c| c.as_str()).unwrap_or_default().to_string(),
        _ => String::new(),
    }
}

impl ChatTemplate {
    /// From `chat_template.jinja` or `tokenizer_config.json` in a model folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = match std::fs::read_to_string(&cfg_path) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| MllmError::Tokenizer(format!("{}: {e}", cfg_path.display())))?,
            Err(_) => serde_json::Value::Null,
        };
        let jinja = dir.join("chat_template.jinja");
        let source = if jinja.exists() {
            std::fs::read_to_string(&jinja).map_err(super::io_err(&jinja))?
        } else {
            match cfg.get("chat_template") {
                Some(serde_json::Value::String(s)) => s.clone(),
                // A list of named templates: take "default".
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template")?.as_str().map(String::from))
                    .unwrap_or_default(),
                _ => String::new(),
            }
        };
        if source.is_empty() {
            return Err(MllmError::Tokenizer(format!(
                "no chat template in {} (expected chat_template.jinja or a chat_template field in tokenizer_config.json)",
                dir.display()
            )));
        }
        Ok(Self { source, bos_token: token_text(cfg.get("bos_token")), eos_token: token_text(cfg.get("eos_token")) })
    }

    /// From a GGUF file's `tokenizer.chat_template`.
    pub fn from_gguf(file: &super::gguf::GgufFile) -> Result<Self> {
        let source = file.meta_str("tokenizer.chat_template")?.to_string();
        let tokens = match file.metadata.get("tokenizer.ggml.tokens") {
            Some(super::gguf::Value::Array(a)) => a.clone(),
            _ => vec![],
        };
        let tok = |key: &str| {
            file.metadata
                .get(key)
                .and_then(|v| v.as_u64())
                .and_then(|i| tokens.get(i as usize))
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        Ok(Self { source, bos_token: tok("tokenizer.ggml.bos_token_id"), eos_token: tok("tokenizer.ggml.eos_token_id") })
    }

    /// The environment transformers renders chat templates in (see the module doc).
    fn environment(&self) -> Result<minijinja::Environment<'_>> {
        let mut env = minijinja::Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| MllmError::Tokenizer(format!("chat template syntax: {e}")))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| -> String {
            let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
            strftime(&fmt, secs)
        });
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", without_generation_tags(&self.source))
            .map_err(|e| MllmError::Tokenizer(format!("chat template does not parse: {e}")))?;
        Ok(env)
    }

    fn render_value(&self, messages: minijinja::Value, add_generation_prompt: bool) -> Result<String> {
        let env = self.environment()?;
        let tmpl = env.get_template("chat").map_err(|e| MllmError::Tokenizer(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        })
        .map_err(|e| MllmError::Tokenizer(format!("rendering the chat template: {e}")))
    }

    /// Render a conversation of text messages.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let msgs = messages
            .iter()
            .map(|m| minijinja::Value::from_pairs([("role", m.role.as_str()), ("content", m.content.as_str())]))
            .collect::<minijinja::Value>();
        self.render_value(msgs, add_generation_prompt)
    }

    /// Render a conversation whose contents are lists of parts (`{"type": "image"}`, `{"type": "text",
    /// "text": …}`), as vision models' templates expect.
    pub fn render_parts(&self, messages: &[PartsMessage], add_generation_prompt: bool) -> Result<String> {
        let msgs = messages
            .iter()
            .map(|m| {
                let parts = m
                    .parts
                    .iter()
                    .map(|p| match p {
                        ContentPart::Image => minijinja::Value::from_pairs([("type", minijinja::Value::from("image"))]),
                        ContentPart::Text(t) => minijinja::Value::from_pairs([
                            ("type", minijinja::Value::from("text")),
                            ("text", minijinja::Value::from(t.as_str())),
                        ]),
                    })
                    .collect::<minijinja::Value>();
                minijinja::Value::from_pairs([("role", minijinja::Value::from(m.role.as_str())), ("content", parts)])
            })
            .collect::<minijinja::Value>();
        self.render_value(msgs, add_generation_prompt)
    }

    /// The pipeline's prompt in this model's own format: one user turn `user_turn` (which holds
    /// `{image}`, `{question}`, `{options}`, e.g. [`USER_TURN`]) and the assistant's opening, with the
    /// placeholders left in place for the stage to fill.
    ///
    /// Templates that take text content keep `{image}` where the turn has it. Templates that only
    /// render content parts (Hugging Face LLaVA's) are given an image part and a text part; the
    /// `image_token` text they write (e.g. `<image>`) becomes `{image}`. Err if the image slot cannot
    /// be found exactly once.
    pub fn prompt_template(&self, user_turn: &str, image_token: Option<&str>) -> Result<String> {
        let text = self.render(&[ChatMessage::new("user", user_turn)], true)?;
        match text.matches("{image}").count() {
            1 => return Ok(text),
            0 => {}
            n => return Err(MllmError::Tokenizer(format!("chat template: the rendered prompt holds {{image}} {n} times, expected once"))),
        }
        let rest = user_turn.replacen("{image}", "", 1);
        let rest = rest.trim_start_matches('\n');
        let parts = vec![ContentPart::Image, ContentPart::Text(rest.to_string())];
        let text = self.render_parts(&[PartsMessage { role: "user".into(), parts }], true)?;
        let Some(tok) = image_token.filter(|t| !t.is_empty()) else {
            return Err(MllmError::Tokenizer(
                "chat template: it drops text content and no image token text was given to find the image slot".into(),
            ));
        };
        match text.matches(tok).count() {
            1 if text.contains("{question}") => Ok(text.replacen(tok, "{image}", 1)),
            n => Err(MllmError::Tokenizer(format!(
                "chat template: with an image part and a text part the prompt holds {tok:?} {n} times (expected once) and {} the question",
                if text.contains("{question}") { "holds" } else { "lacks" }
            ))),
        }
    }
}

/// The pipeline's prompt for a Hugging Face LLaVA-style folder in the model's own chat format:
/// [`ChatTemplate::prompt_template`] on [`USER_TURN`], with the text of the model's image token
/// (`image_token_index` looked up in its `tokenizer.json`) marking the image slot for templates that
/// render content parts. `{image}`, `{question}` and `{options}` are left for the stage to fill.
pub fn pipeline_prompt(dir: &Path, image_token_index: i64) -> Result<String> {
    let chat = ChatTemplate::from_dir(dir)?;
    let tok = load_tokenizer(dir)?;
    let image = u32::try_from(image_token_index)
        .ok()
        .and_then(|i| tok.id_to_token(i))
        .ok_or_else(|| MllmError::Tokenizer(format!("{}: image token id {image_token_index} is not in tokenizer.json", dir.display())))?;
    chat.prompt_template(USER_TURN, Some(&image))
}

/// transformers' `{% generation %}…{% endgeneration %}` blocks (which only mark the assistant's tokens)
/// as `{% if true %}…{% endif %}`, keeping whitespace control: the same text, in syntax minijinja parses.
fn without_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find("{%") {
        out.push_str(&rest[..at]);
        let tag = &rest[at..];
        let Some(end) = tag.find("%}") else {
            rest = tag;
            break;
        };
        let inner = &tag[2..end];
        let (lead, body) = match inner.strip_prefix(['-', '+']) {
            Some(b) => (&inner[..1], b),
            None => ("", inner),
        };
        let (body, trail) = match body.strip_suffix(['-', '+']) {
            Some(b) => (b, &body[body.len() - 1..]),
            None => (body, ""),
        };
        match body.trim() {
            "generation" => out.push_str(&format!("{{%{lead} if true {trail}%}}")),
            "endgeneration" => out.push_str(&format!("{{%{lead} endif {trail}%}}")),
            _ => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Jinja's `tojson` as transformers defines it: Python's `json.dumps(value, ensure_ascii=False,
/// indent=indent, sort_keys=sort_keys)`: separators `", "` and `": "` (with an indent, `","` at line
/// ends), keys in insertion order (minijinja's `preserve_order`).
fn tojson(value: minijinja::Value, kwargs: minijinja::value::Kwargs) -> std::result::Result<String, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_py_json(&value, indent, sort_keys.unwrap_or(false), 0, &mut out)?;
    Ok(out)
}

fn write_py_json(
    v: &minijinja::Value,
    indent: Option<usize>,
    sort: bool,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    use minijinja::value::ValueKind as K;
    let newline = |out: &mut String, d: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * d));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        K::Undefined | K::None => out.push_str("null"),
        K::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        K::Number => match i64::try_from(v.clone()) {
            Ok(i) if v.as_i64().is_some() => out.push_str(&i.to_string()),
            _ => {
                let f = f64::try_from(v.clone())?;
                // Python writes floats with repr: 1.0, 0.5, 1e-05 …; whole floats keep ".0".
                let s =
                    serde_json::to_string(&f).map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string()))?;
                out.push_str(&s);
            }
        },
        K::String => {
            out.push_str(&serde_json::to_string(v.as_str().unwrap_or_default()).expect("a string serializes"));
        }
        K::Seq | K::Iterable => {
            let items: Vec<minijinja::Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                write_py_json(x, indent, sort, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        K::Map => {
            let mut keys: Vec<minijinja::Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if sort {
                keys.sort();
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                let key = k.as_str().map(str::to_string).unwrap_or_else(|| k.to_string());
                out.push_str(&serde_json::to_string(&key).expect("a string serializes"));
                out.push_str(": ");
                write_py_json(&v.get_item(k)?, indent, sort, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => {
            return Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                format!("tojson: cannot write a {} as JSON", v.kind()),
            ))
        }
    }
    Ok(())
}

/// `time.strftime(fmt, time.gmtime(unix_secs))` for the directives chat templates use (`%d %b %Y`
/// and friends), in UTC; an unknown directive is written as it is.
pub fn strftime(fmt: &str, unix_secs: i64) -> String {
    const MONTHS: [&str; 12] =
        ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday (index 3 from Monday)
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mname = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('b') => out.push_str(&mname[..3]),
            Some('B') => out.push_str(mname),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('M') => out.push_str(&format!("{m:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('j') => out.push_str(&format!("{:03}", unix_day_of_year(year, month, day))),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

fn unix_day_of_year(year: i64, month: i64, day: i64) -> i64 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    cum[(month - 1) as usize] + day + i64::from(leap && month > 2)
}

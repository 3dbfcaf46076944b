//! The arguments of `#[cache_worker(...)]`, parsed and checked into [`Attributes`].
//!
//! Every key is parsed even after an error, so that all mistakes in one attribute are reported
//! in one build, each at its own span. The model that comes out is complete only when the
//! [`Ctxt`] holds no error; otherwise it is a best effort that the expansion may still use to
//! emit stand-ins (so one mistake does not become twenty).

use std::collections::BTreeSet;
use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{ToTokens, quote};
use syn::meta::ParseNestedMeta;
use syn::parse::{ParseStream, Parser};
use syn::{Lit, LitStr, Token};

use crate::ctxt::Ctxt;

/// Every key the attribute accepts, with the example shown in messages.
const KEYS: &[(&str, &str)] = &[
    ("bucket", "\"widgets\""),
    ("file", "\"widgets.dump\""),
    ("refresh", "\"15m\""),
    ("load_timeout", "\"30s\""),
    ("concurrency", "16"),
    ("schema", "1"),
    ("dump_interval", "\"5s\""),
    ("cache_enabled", "false"),
    ("delta_threshold", "10000"),
    ("delta_ttl", "\"1h\""),
    ("max_entries", "10000"),
    ("not_found_ttl", "\"30s\""),
    ("crate", "\"::cache_worker\""),
];

/// Names that users coming from the Elixir original or other caches are likely to try.
const ALIASES: &[(&str, &str)] = &[
    ("refresh_interval", "refresh"),
    ("interval", "refresh"),
    ("ttl", "refresh"),
    ("name", "bucket"),
    ("path", "file"),
    ("dump", "file"),
    ("dump_file", "file"),
    ("timeout", "load_timeout"),
    ("enabled", "cache_enabled"),
    ("krate", "crate"),
];

const DURATION_FORMS: &str = "\"90s\", \"15m\", \"1h\" or \"1h30m\"";

/// A value together with the span of the tokens it was written as.
#[derive(Debug, Clone)]
pub(crate) struct Spanned<T> {
    pub(crate) value: T,
    pub(crate) span: Span,
}

impl<T> Spanned<T> {
    fn new(value: T, span: Span) -> Self {
        Self { value, span }
    }
}

/// The checked arguments of one `#[cache_worker(...)]`.
///
/// Every field but `bucket` is optional: `None` means "not given", and the runtime's defaults
/// apply. `bucket` is `None` only when an error has been reported for it.
#[derive(Default)]
pub(crate) struct Attributes {
    pub(crate) bucket: Option<Spanned<String>>,
    pub(crate) file: Option<Spanned<String>>,
    pub(crate) refresh: Option<Spanned<Duration>>,
    pub(crate) load_timeout: Option<Spanned<Duration>>,
    pub(crate) concurrency: Option<Spanned<usize>>,
    pub(crate) schema: Option<Spanned<u32>>,
    pub(crate) dump_interval: Option<Spanned<Duration>>,
    pub(crate) cache_enabled: Option<Spanned<bool>>,
    pub(crate) delta_threshold: Option<Spanned<usize>>,
    pub(crate) delta_ttl: Option<Spanned<Duration>>,
    pub(crate) max_entries: Option<Spanned<usize>>,
    pub(crate) not_found_ttl: Option<Spanned<Duration>>,
    /// The path of the runtime crate, `::cache_worker` unless `crate = "..."` says otherwise.
    pub(crate) krate: Option<syn::Path>,
}

impl Attributes {
    /// The path generated code names the runtime by.
    pub(crate) fn krate(&self) -> syn::Path {
        match &self.krate {
            Some(path) => path.clone(),
            None => syn::Path {
                leading_colon: Some(Default::default()),
                segments: std::iter::once(syn::PathSegment::from(syn::Ident::new(
                    "cache_worker",
                    Span::call_site(),
                )))
                .collect(),
            },
        }
    }
}

/// Parses the attribute's arguments; every problem goes into `cx`.
pub(crate) fn parse(cx: &mut Ctxt, args: TokenStream) -> Attributes {
    let mut state = State::default();
    let parser = syn::meta::parser(|meta| state.parse_key(cx, meta));
    // Only malformed syntax that cannot be skipped (a literal where a key should be, a stray
    // token after a value) ends the parse early; all else is recorded and parsing goes on.
    if let Err(error) = parser.parse2(args) {
        cx.push(error);
    }
    if !state.seen.contains("bucket") {
        cx.error_at(
            Span::call_site(),
            "missing `bucket` in #[cache_worker]: name the cache, e.g. \
             #[cache_worker(bucket = \"widgets\")]",
        );
    }
    state.attributes
}

#[derive(Default)]
struct State {
    attributes: Attributes,
    seen: BTreeSet<&'static str>,
}

impl State {
    fn parse_key(&mut self, cx: &mut Ctxt, meta: ParseNestedMeta<'_>) -> syn::Result<()> {
        let Some((key, example)) = known_key(&meta.path) else {
            cx.error_spanned_by(&meta.path, unknown_key_message(&meta.path));
            rest_of_entry(meta.input)?;
            return Ok(());
        };
        let first = self.seen.insert(key);
        let Some(value) = value_tokens(cx, &meta, key, example)? else {
            return Ok(());
        };
        if !first {
            cx.error_spanned_by(
                &meta.path,
                format!("duplicate `{key}` in #[cache_worker]: each key may be given once"),
            );
            return Ok(());
        }

        let a = &mut self.attributes;
        match key {
            // #[cache_worker(bucket = "widgets")]
            "bucket" => a.bucket = bucket(cx, &value),
            // #[cache_worker(file = "widgets.dump")]
            "file" => a.file = file(cx, &value),
            // #[cache_worker(refresh = "15m")]
            // #[cache_worker(refresh = "off")] (or "0s"): no periodic refresh, as in the
            // environment and the builder
            "refresh" => a.refresh = refresh(cx, &value),
            // #[cache_worker(load_timeout = "30s")]
            "load_timeout" => a.load_timeout = duration(cx, key, &value, NonZero::Required),
            // #[cache_worker(dump_interval = "5s")]
            "dump_interval" => a.dump_interval = duration(cx, key, &value, NonZero::NotRequired),
            // #[cache_worker(concurrency = 16)]
            "concurrency" => {
                a.concurrency = integer::<usize>(cx, key, example, &value).and_then(|n| {
                    if n.value == 0 {
                        cx.error_at(n.span, "`concurrency` must be at least 1");
                        None
                    } else {
                        Some(n)
                    }
                });
            }
            // #[cache_worker(schema = 1)]
            "schema" => a.schema = integer::<u32>(cx, key, example, &value),
            // #[cache_worker(cache_enabled = false)]
            "cache_enabled" => a.cache_enabled = boolean(cx, key, &value),
            // #[cache_worker(delta_threshold = 10000)] (0: none kept)
            "delta_threshold" => a.delta_threshold = integer::<usize>(cx, key, example, &value),
            // #[cache_worker(delta_ttl = "1h")]
            "delta_ttl" => a.delta_ttl = duration(cx, key, &value, NonZero::NotRequired),
            // #[cache_worker(max_entries = 10000)] (at least 1; left out: no bound)
            "max_entries" => {
                a.max_entries = integer::<usize>(cx, key, example, &value).and_then(|n| {
                    if n.value == 0 {
                        cx.error_at(
                            n.span,
                            "`max_entries` must be at least 1 (leave it out for no bound)",
                        );
                        None
                    } else {
                        Some(n)
                    }
                });
            }
            // #[cache_worker(not_found_ttl = "30s")] (nonzero; left out: not remembered)
            "not_found_ttl" => a.not_found_ttl = duration(cx, key, &value, NonZero::Required),
            // #[cache_worker(crate = "::my_reexport::cache_worker")]
            "crate" => a.krate = krate(cx, &value),
            _ => unreachable_key(cx, &meta.path),
        }
        Ok(())
    }
}

/// `KEYS` and the match in `parse_key` are kept in step by the unit tests; this is the
/// non-panicking answer if they ever drift apart.
fn unreachable_key(cx: &mut Ctxt, path: &syn::Path) {
    cx.error_spanned_by(path, "internal error in #[cache_worker]: key not handled");
}

fn known_key(path: &syn::Path) -> Option<(&'static str, &'static str)> {
    let ident = path.get_ident()?;
    KEYS.iter().copied().find(|(key, _)| ident == key)
}

fn unknown_key_message(path: &syn::Path) -> String {
    let name = path.to_token_stream().to_string().replace(' ', "");
    let valid = KEYS
        .iter()
        .map(|(key, _)| format!("`{key}`"))
        .collect::<Vec<_>>()
        .join(", ");
    match suggestion(&name) {
        Some(key) => format!(
            "unknown key `{name}` in #[cache_worker]; did you mean `{key}`? valid keys: {valid}"
        ),
        None => format!("unknown key `{name}` in #[cache_worker]; valid keys: {valid}"),
    }
}

/// A known key close to a misspelled or aliased one.
fn suggestion(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    if let Some((_, key)) = ALIASES.iter().find(|(alias, _)| *alias == lower) {
        return Some(key);
    }
    KEYS.iter()
        .map(|(key, _)| (edit_distance(&lower, key), *key))
        .filter(|(distance, key)| *distance <= 2 && *distance < key.len())
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, key)| key)
}

/// Levenshtein distance, for "did you mean" only.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// The tokens up to the next top-level comma (or the end), consumed.
fn rest_of_entry(input: ParseStream<'_>) -> syn::Result<TokenStream> {
    let mut tokens = TokenStream::new();
    while !input.is_empty() && !input.peek(Token![,]) {
        tokens.extend([input.parse::<TokenTree>()?]);
    }
    Ok(tokens)
}

/// The value of `key = value`: the tokens after `=`, up to the next top-level comma.
///
/// `None` (with an error recorded) when there is no `=` or nothing after it; the rest of the
/// entry is consumed either way, so that parsing goes on with the next key.
fn value_tokens(
    cx: &mut Ctxt,
    meta: &ParseNestedMeta<'_>,
    key: &str,
    example: &str,
) -> syn::Result<Option<TokenStream>> {
    let eq: Option<Token![=]> = meta.input.parse()?;
    let value = rest_of_entry(meta.input)?;
    match eq {
        None => {
            let path = &meta.path;
            cx.error_spanned_by(
                quote!(#path #value),
                format!("expected a value: `{key} = {example}`"),
            );
            Ok(None)
        }
        Some(eq) if value.is_empty() => {
            let path = &meta.path;
            cx.error_spanned_by(
                quote!(#path #eq),
                format!("expected a value after `=`: `{key} = {example}`"),
            );
            Ok(None)
        }
        Some(_) => Ok(Some(value)),
    }
}

/// The value as a single literal (`true`/`false` and negative numbers included).
fn literal(value: &TokenStream) -> Option<Lit> {
    syn::parse2::<Lit>(value.clone()).ok()
}

fn string(cx: &mut Ctxt, key: &str, value: &TokenStream, what: &str) -> Option<LitStr> {
    match literal(value) {
        Some(Lit::Str(lit)) => Some(lit),
        _ => {
            cx.error_spanned_by(value, format!("`{key}` expects {what}"));
            None
        }
    }
}

fn bucket(cx: &mut Ctxt, value: &TokenStream) -> Option<Spanned<String>> {
    let lit = string(
        cx,
        "bucket",
        value,
        "a string literal: `bucket = \"widgets\"`",
    )?;
    let name = lit.value();
    match check_bucket_name(&name) {
        Ok(()) => Some(Spanned::new(name, lit.span())),
        Err(problem) => {
            cx.error_at(
                lit.span(),
                format!(
                    "invalid bucket name {name:?}: {problem}; the bucket name becomes part of \
                     file names and environment variable names, so use only ASCII letters, \
                     digits, `_` and `-`, not starting with `-`"
                ),
            );
            None
        }
    }
}

/// Why `name` cannot be a bucket name, if it cannot.
pub(crate) fn check_bucket_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".to_owned());
    }
    if name.starts_with('-') {
        return Err("it starts with `-`".to_owned());
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        Some(c) => Err(format!("{c:?} is not allowed")),
        None => Ok(()),
    }
}

fn file(cx: &mut Ctxt, value: &TokenStream) -> Option<Spanned<String>> {
    let lit = string(
        cx,
        "file",
        value,
        "a string literal with the dump file's path: `file = \"widgets.dump\"`",
    )?;
    let path = lit.value();
    if path.trim().is_empty() {
        cx.error_at(
            lit.span(),
            "`file` must not be empty; leave `file` out for a worker without a dump file",
        );
        return None;
    }
    Some(Spanned::new(path, lit.span()))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum NonZero {
    Required,
    NotRequired,
}

fn duration(
    cx: &mut Ctxt,
    key: &str,
    value: &TokenStream,
    nonzero: NonZero,
) -> Option<Spanned<Duration>> {
    let what = format!("a duration string such as {DURATION_FORMS}");
    let lit = string(cx, key, value, &what)?;
    let text = lit.value();
    match humantime::parse_duration(&text) {
        Ok(d) if d.is_zero() && nonzero == NonZero::Required => {
            cx.error_at(
                lit.span(),
                format!("`{key}` must be greater than zero, e.g. {DURATION_FORMS}"),
            );
            None
        }
        Ok(d) => Some(Spanned::new(d, lit.span())),
        Err(error) => {
            cx.error_at(
                lit.span(),
                format!(
                    "invalid duration {text:?} for `{key}` ({error}); write a number and a unit, \
                     such as {DURATION_FORMS}"
                ),
            );
            None
        }
    }
}

/// A refresh interval, or `"off"`/`"none"` (kept as zero, which the runtime reads as "no
/// periodic refresh", as it does `"0s"`).
fn refresh(cx: &mut Ctxt, value: &TokenStream) -> Option<Spanned<Duration>> {
    if let Some(Lit::Str(lit)) = literal(value)
        && matches!(lit.value().trim(), "off" | "none")
    {
        return Some(Spanned::new(Duration::ZERO, lit.span()));
    }
    duration(cx, "refresh", value, NonZero::NotRequired)
}

fn integer<N>(cx: &mut Ctxt, key: &str, example: &str, value: &TokenStream) -> Option<Spanned<N>>
where
    N: FromStr + Bounds,
    N::Err: Display,
{
    match literal(value) {
        Some(Lit::Int(lit)) => match lit.base10_parse::<N>() {
            Ok(n) => Some(Spanned::new(n, lit.span())),
            Err(_) => {
                cx.error_at(
                    lit.span(),
                    format!(
                        "`{key}` must be an integer from {} to {}",
                        N::MIN_TEXT,
                        N::MAX_TEXT
                    ),
                );
                None
            }
        },
        _ => {
            cx.error_spanned_by(
                value,
                format!("`{key}` expects an integer literal, e.g. `{key} = {example}`"),
            );
            None
        }
    }
}

/// The range of an integer key, for messages.
trait Bounds {
    const MIN_TEXT: &'static str;
    const MAX_TEXT: &'static str;
}

impl Bounds for usize {
    const MIN_TEXT: &'static str = "0";
    const MAX_TEXT: &'static str = "usize::MAX";
}

impl Bounds for u32 {
    const MIN_TEXT: &'static str = "0";
    const MAX_TEXT: &'static str = "4294967295";
}

fn boolean(cx: &mut Ctxt, key: &str, value: &TokenStream) -> Option<Spanned<bool>> {
    match literal(value) {
        Some(Lit::Bool(lit)) => Some(Spanned::new(lit.value(), lit.span())),
        _ => {
            cx.error_spanned_by(
                value,
                format!("`{key}` expects `true` or `false`, e.g. `{key} = false`"),
            );
            None
        }
    }
}

fn krate(cx: &mut Ctxt, value: &TokenStream) -> Option<syn::Path> {
    let lit = string(
        cx,
        "crate",
        value,
        "a string literal with the path of the cache-worker crate: \
         `crate = \"::my_reexport::cache_worker\"`",
    )?;
    match lit.parse_with(syn::Path::parse_mod_style) {
        Ok(path) => Some(path),
        Err(_) => {
            cx.error_at(
                lit.span(),
                format!(
                    "`crate` expects a path such as \"::cache_worker\" or \
                     \"::my_reexport::cache_worker\", not {:?}",
                    lit.value()
                ),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(args: TokenStream) -> Attributes {
        let mut cx = Ctxt::new();
        let attributes = parse(&mut cx, args);
        if let Err(error) = cx.check() {
            panic!("unexpected errors: {:?}", messages(error));
        }
        attributes
    }

    fn parse_err(args: TokenStream) -> Vec<String> {
        let mut cx = Ctxt::new();
        let _ = parse(&mut cx, args);
        match cx.check() {
            Ok(()) => panic!("expected errors"),
            Err(error) => messages(error),
        }
    }

    fn messages(error: syn::Error) -> Vec<String> {
        error.into_iter().map(|e| e.to_string()).collect()
    }

    fn assert_one_error(args: TokenStream, contains: &[&str]) {
        let errors = parse_err(args);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        for needle in contains {
            assert!(
                errors[0].contains(needle),
                "{:?} lacks {needle:?}",
                errors[0]
            );
        }
    }

    #[test]
    fn every_key() {
        let a = parse_ok(quote! {
            bucket = "widgets",
            file = "/var/cache/widgets.dump",
            refresh = "1h30m",
            load_timeout = "30s",
            concurrency = 16,
            schema = 3,
            dump_interval = "0s",
            cache_enabled = false,
            crate = "::my::cache_worker",
        });
        assert_eq!(a.bucket.map(|b| b.value).as_deref(), Some("widgets"));
        assert_eq!(
            a.file.map(|f| f.value).as_deref(),
            Some("/var/cache/widgets.dump")
        );
        assert_eq!(a.refresh.map(|d| d.value), Some(Duration::from_secs(5400)));
        assert_eq!(
            a.load_timeout.map(|d| d.value),
            Some(Duration::from_secs(30))
        );
        assert_eq!(a.concurrency.map(|n| n.value), Some(16));
        assert_eq!(a.schema.map(|n| n.value), Some(3));
        assert_eq!(a.dump_interval.map(|d| d.value), Some(Duration::ZERO));
        assert_eq!(a.cache_enabled.map(|b| b.value), Some(false));
        let krate = a.krate.map(|p| p.to_token_stream().to_string());
        assert_eq!(krate.as_deref(), Some(":: my :: cache_worker"));
    }

    #[test]
    fn only_bucket_leaves_the_rest_unset() {
        let a = parse_ok(quote!(bucket = "w"));
        assert!(a.file.is_none() && a.refresh.is_none() && a.load_timeout.is_none());
        assert!(a.concurrency.is_none() && a.schema.is_none() && a.dump_interval.is_none());
        assert!(a.cache_enabled.is_none() && a.krate.is_none());
        assert_eq!(a.krate().to_token_stream().to_string(), ":: cache_worker");
    }

    #[test]
    fn spec_durations() {
        for (text, secs) in [("90s", 90), ("15m", 900), ("1h", 3600), ("1h30m", 5400)] {
            let a = parse_ok(quote!(bucket = "w", refresh = #text));
            assert_eq!(a.refresh.map(|d| d.value), Some(Duration::from_secs(secs)));
        }
    }

    #[test]
    fn every_key_in_the_table_is_handled() {
        for (key, example) in KEYS {
            let args: TokenStream = if *key == "bucket" {
                format!("bucket = {example}")
            } else {
                format!("bucket = \"w\", {key} = {example}")
            }
            .parse()
            .expect("valid tokens");
            parse_ok(args);
        }
    }

    #[test]
    fn missing_bucket() {
        assert_one_error(quote!(), &["missing `bucket`"]);
        assert_one_error(quote!(file = "x.dump"), &["missing `bucket`"]);
    }

    #[test]
    fn unknown_key_lists_valid_keys_and_suggests() {
        assert_one_error(
            quote!(bucket = "w", refresh_interval = "15m"),
            &[
                "unknown key `refresh_interval`",
                "did you mean `refresh`",
                "`bucket`",
                "`crate`",
            ],
        );
        assert_one_error(
            quote!(bukcet = "w", bucket = "w"),
            &["did you mean `bucket`"],
        );
        let errors = parse_err(quote!(bucket = "w", color = "red"));
        assert!(!errors[0].contains("did you mean"), "{errors:?}");
        assert_one_error(quote!(bucket = "w", a::b = 1), &["unknown key `a::b`"]);
    }

    #[test]
    fn duplicate_key() {
        assert_one_error(
            quote!(bucket = "a", refresh = "1m", bucket = "b"),
            &["duplicate `bucket`"],
        );
    }

    #[test]
    fn non_string_values() {
        assert_one_error(
            quote!(bucket = widgets),
            &["`bucket` expects a string literal"],
        );
        assert_one_error(quote!(bucket = 5), &["`bucket` expects a string literal"]);
        assert_one_error(quote!(bucket = "w", file = some::path), &["`file` expects"]);
        assert_one_error(
            quote!(bucket = "w", refresh = 900),
            &["`refresh` expects a duration string", "\"15m\""],
        );
    }

    #[test]
    fn bad_durations() {
        assert_one_error(
            quote!(bucket = "w", refresh = "soon"),
            &[
                "invalid duration \"soon\" for `refresh`",
                "\"90s\", \"15m\", \"1h\" or \"1h30m\"",
            ],
        );
        assert_one_error(quote!(bucket = "w", refresh = "15"), &["invalid duration"]);
        assert_one_error(
            quote!(bucket = "w", load_timeout = "0ms"),
            &["`load_timeout` must be greater than zero"],
        );
    }

    #[test]
    fn refresh_off_means_no_periodic_refresh() {
        for off in ["off", "none", "0s", "0"] {
            let a = parse_ok(quote!(bucket = "w", refresh = #off));
            assert_eq!(a.refresh.map(|d| d.value), Some(Duration::ZERO), "{off}");
        }
    }

    #[test]
    fn bad_integers_and_booleans() {
        assert_one_error(
            quote!(bucket = "w", concurrency = 0),
            &["`concurrency` must be at least 1"],
        );
        assert_one_error(
            quote!(bucket = "w", concurrency = -1),
            &["`concurrency` must be"],
        );
        assert_one_error(
            quote!(bucket = "w", concurrency = "8"),
            &["expects an integer"],
        );
        assert_one_error(
            quote!(bucket = "w", schema = 4294967296),
            &["from 0 to 4294967295"],
        );
        assert_one_error(
            quote!(bucket = "w", cache_enabled = "no"),
            &["`true` or `false`"],
        );
    }

    #[test]
    fn bucket_names() {
        for ok in ["widgets", "Widgets_2", "a-b", "x"] {
            assert_eq!(check_bucket_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "-x", "a b", "a/b", "a.b", "ä", "a$b"] {
            assert!(check_bucket_name(bad).is_err(), "{bad}");
        }
        assert_one_error(
            quote!(bucket = "my widgets"),
            &[
                "invalid bucket name \"my widgets\"",
                "' ' is not allowed",
                "ASCII letters",
            ],
        );
    }

    #[test]
    fn missing_values() {
        assert_one_error(
            quote!(bucket),
            &["expected a value: `bucket = \"widgets\"`"],
        );
        assert_one_error(quote!(bucket = ), &["expected a value after `=`"]);
        assert_one_error(quote!(bucket("w")), &["expected a value"]);
    }

    #[test]
    fn bad_crate_path() {
        assert_one_error(
            quote!(bucket = "w", crate = "not a path"),
            &["`crate` expects a path"],
        );
    }

    #[test]
    fn all_errors_are_reported_together() {
        let errors = parse_err(quote!(
            refresh = "1 fortnight",
            colour = "red",
            file = 3,
            refresh = "1m",
            concurrency = 0,
        ));
        assert_eq!(errors.len(), 6, "{errors:#?}");
        assert!(errors[0].contains("invalid duration"));
        assert!(errors[1].contains("unknown key `colour`"));
        assert!(errors[2].contains("`file` expects"));
        assert!(errors[3].contains("duplicate `refresh`"));
        assert!(errors[4].contains("`concurrency` must be at least 1"));
        assert!(errors[5].contains("missing `bucket`"));
    }

    #[test]
    fn unparsable_syntax_is_an_error_not_a_panic() {
        let errors = parse_err(quote!("bucket" = "w"));
        assert!(errors[0].contains("literal"), "{errors:?}");
    }
}

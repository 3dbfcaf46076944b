//! Generates the glue: the attribute's settings, the process-wide slot, and the associated
//! functions that forward to it. All logic lives in the runtime crate, behind
//! `<crate>::__private`; this file only writes calls to it.

use std::time::Duration;

use proc_macro2::{Group, Literal, Span, TokenStream, TokenTree};
use quote::{quote, quote_spanned};

use crate::attr::{self, Attributes, Spanned};
use crate::ctxt::Ctxt;
use crate::item::{self, Target};

/// The whole expansion: the user's item unchanged, the glue, and every error.
///
/// On errors in the arguments the glue is still generated (with stand-in settings), so that
/// calls like `T::start()` elsewhere in the user's code do not add errors of their own; only
/// the errors of the attribute are shown. Glue is left out only when the item itself is not
/// something it can be generated for.
pub(crate) fn cache_worker(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut cx = Ctxt::new();
    let attributes = attr::parse(&mut cx, args);
    let target = item::check(&mut cx, item.clone());
    let glue = target.map(|target| glue(&attributes, &target));
    let errors = cx.check().err().map(syn::Error::into_compile_error);
    quote! {
        #item
        #glue
        #errors
    }
}

fn glue(attributes: &Attributes, target: &Target) -> TokenStream {
    let krate = attributes.krate();
    let p = quote!(#krate::__private);
    let Target { ident, vis } = target;
    // Code that fails to type-check when the user forgot `impl CacheWorker` carries the
    // struct name's span, so the error points at the struct.
    let span = ident.span();

    let settings = settings(&p, attributes);
    let bucket = attributes
        .bucket
        .as_ref()
        .map_or("", |bucket| bucket.value.as_str());

    let key = quote_spanned!(span=> <#ident as #p::CacheWorker>::Key);
    let value = quote_spanned!(span=> <#ident as #p::CacheWorker>::Value);
    let worker = quote_spanned!(span=> #p::Worker<#ident>);
    // Without `impl CacheWorker`, the static's type is the one item outside the where clause
    // below that fails (if `Slot` bounds its parameter); it points at the struct name too.
    let slot = respan(quote!(#p::Slot<#ident>), span);
    // The glue's signatures name `<T as CacheWorker>::Key` and the like, so without the impl
    // each of them would fail on its own. Under this where clause they type-check, and the
    // one unsatisfied bound is reported once, at the struct name, with the trait's
    // `#[diagnostic::on_unimplemented]` message.
    let implemented = respan(quote!(where #ident: #p::CacheWorker), span);
    // Checked against the same unsatisfied bound: spanned alike, rustc shows it once.
    let borrow_q = respan(
        quote!(#key: #p::Borrow<Q>, Q: #p::Hash + ::core::cmp::Eq + ?::core::marker::Sized,),
        span,
    );

    let doc_start = format!(
        " Starts the process-wide `{ident}` worker (bucket `{bucket}`) with `self` as its \
         state: restores the dump file if there is one, seeds the bucket otherwise, and \
         refreshes it in the background until [`shutdown`](Self::shutdown).\n\n\
         Returns the worker's handle; the other associated functions of `{ident}` reach the \
         same instance.\n\n\
         # Errors\n\n\
         If the worker is already running (it can be started again after \
         [`shutdown`](Self::shutdown)), or if the start itself fails."
    );
    let doc_get = format!(
        " The value of `key`: from the bucket, or loaded on a miss (and then stored).\n\n\
         `None` if the key does not exist upstream, if the load failed (the failure is \
         logged), or if `{ident}` has not been started. [`fetch`](Self::fetch) says why."
    );
    let doc_fetch = format!(
        " The value of `key`: from the bucket, or loaded on a miss (and then stored). \
         Concurrent misses of one key share one load.\n\n\
         # Errors\n\n\
         `FetchError::NotFound` if the key does not exist upstream; `Load`, `Panicked` or \
         `Timeout` if the load failed; `NotStarted` if `{ident}` has not been started."
    );
    let doc_peek = format!(
        " The value of `key` if it is in the bucket; never loads. `None` if `{ident}` has \
         not been started."
    );
    let doc_insert = format!(
        " Stores `value` under `key` without loading, replacing any value there (an \
         `Inserted` or `Updated` event; an equal value is no change). Does nothing if \
         the cache of `{ident}` is disabled.\n\n\
         # Errors\n\n\
         `Error::NotStarted` if `{ident}` has not been started: the value is not kept."
    );
    let doc_builder = format!(
        " A builder for another instance of `{ident}` with `self` as its state, independent \
         of the process-wide one: it starts from this attribute's settings (bucket `{bucket}`), \
         which the environment and the builder's own methods then override. \
         (`Worker::builder(state)` starts from the defaults: it cannot see the attribute.)"
    );
    let doc_invalidate = " Removes `key` from the bucket (a `Removed` event with cause \
                          `Invalidated`) and returns the value it had, if any."
        .to_owned();
    let doc_keys = format!(" The keys in the bucket (empty if `{ident}` has not been started).");
    let doc_len =
        format!(" The number of entries in the bucket (0 if `{ident}` has not been started).");
    let doc_subscribe = format!(
        " A stream of the bucket's change events (`cache_worker::Event`) from now on; it \
         ends when the worker shuts down. Made before `{ident}` is started, it waits for the \
         start and follows the started worker (the start's own changes, such as its seed, \
         come before it attaches)."
    );
    let doc_version = format!(
        " The bucket's version: it moves with every change (see `Worker::version`); 0 if \
         `{ident}` has not been started."
    );
    let doc_changes_since = format!(
        " What changed in the bucket since version `since` (see `Worker::changes_since`); \
         `Changes::Full` of nothing at version 0 if `{ident}` has not been started."
    );
    let doc_stats = format!(
        " Counters of hits, misses, loads and failures of the running `{ident}` worker (all \
         zero if it has not been started)."
    );
    let doc_worker = format!(
        " The handle of the running `{ident}` worker; `None` before \
         [`start`](Self::start) and after [`shutdown`](Self::shutdown)."
    );
    let doc_refresh_all = format!(
        " Runs one full refresh cycle now and returns when it is done.\n\n\
         # Errors\n\n\
         If `{ident}` has not been started, or if the cycle could not run."
    );
    let doc_shutdown = format!(
        " Stops the background refresh of `{ident}` and writes the final dump; afterwards \
         the worker reads as not started and can be started again. Does nothing if it is \
         not running.\n\n\
         # Errors\n\n\
         `Error::DumpWrite` if the final dump could not be written (the previous dump file \
         is left as it was)."
    );

    quote! {
        #[allow(dead_code, clippy::len_without_is_empty)]
        impl #ident #implemented {
            #[doc(hidden)]
            const __CACHE_WORKER_ATTRIBUTES: #p::Attributes = #settings;

            #[doc(hidden)]
            fn __cache_worker_slot() -> &'static #slot {
                static __CACHE_WORKER_SLOT: #slot = #p::Slot::new(#bucket);
                &__CACHE_WORKER_SLOT
            }

            #[doc = #doc_start]
            #vis async fn start(self) -> #p::Result<#worker, #p::Error> {
                Self::__cache_worker_slot()
                    .start(self, &Self::__CACHE_WORKER_ATTRIBUTES)
                    .await
            }

            #[doc = #doc_builder]
            #vis fn builder(self) -> #p::Builder<#ident> {
                #p::Worker::builder(self).attributes(&Self::__CACHE_WORKER_ATTRIBUTES)
            }

            #[doc = #doc_get]
            #vis async fn get(key: &#key) -> #p::Option<#p::Arc<#value>> {
                Self::__cache_worker_slot().get(key).await
            }

            #[doc = #doc_fetch]
            #vis async fn fetch(key: &#key) -> #p::Result<#p::Arc<#value>, #p::FetchError> {
                Self::__cache_worker_slot().fetch(key).await
            }

            #[doc = #doc_peek]
            #[must_use]
            #vis fn peek<Q>(key: &Q) -> #p::Option<#p::Arc<#value>>
            where
                #borrow_q
            {
                Self::__cache_worker_slot().peek(key)
            }

            #[doc = #doc_insert]
            #vis fn insert(key: #key, value: #value) -> #p::Result<(), #p::Error> {
                Self::__cache_worker_slot().insert(key, value)
            }

            #[doc = #doc_invalidate]
            #vis fn invalidate<Q>(key: &Q) -> #p::Option<#p::Arc<#value>>
            where
                #borrow_q
            {
                Self::__cache_worker_slot().invalidate(key)
            }

            #[doc = #doc_keys]
            #[must_use]
            #vis fn keys() -> #p::Vec<#key> {
                Self::__cache_worker_slot().keys()
            }

            #[doc = #doc_len]
            #[must_use]
            #vis fn len() -> usize {
                Self::__cache_worker_slot().len()
            }

            #[doc = #doc_subscribe]
            #[must_use]
            #vis fn subscribe() -> #p::EventStream<#key, #value> {
                Self::__cache_worker_slot().subscribe()
            }

            #[doc = #doc_version]
            #[must_use]
            #vis fn version() -> u64 {
                Self::__cache_worker_slot().version()
            }

            #[doc = #doc_changes_since]
            #[must_use]
            #vis fn changes_since(since: #p::Option<u64>) -> #p::Changes<#key, #value> {
                Self::__cache_worker_slot().changes_since(since)
            }

            #[doc = #doc_stats]
            #[must_use]
            #vis fn stats() -> #p::Stats {
                Self::__cache_worker_slot().stats()
            }

            #[doc = #doc_worker]
            #[must_use]
            #vis fn worker() -> #p::Option<#worker> {
                Self::__cache_worker_slot().worker()
            }

            #[doc = #doc_refresh_all]
            #vis async fn refresh_all() -> #p::Result<#p::RefreshReport, #p::Error> {
                Self::__cache_worker_slot().refresh_all().await
            }

            #[doc = #doc_shutdown]
            #vis async fn shutdown() -> #p::Result<(), #p::Error> {
                Self::__cache_worker_slot().shutdown().await
            }
        }
    }
}

/// The `Attributes { .. }` value: the compile-time layer of the settings.
fn settings(p: &TokenStream, a: &Attributes) -> TokenStream {
    // A missing or invalid bucket has been reported; "" only keeps the rest compiling.
    let bucket = match &a.bucket {
        Some(bucket) => string(bucket),
        None => quote!(""),
    };
    let file = option(p, a.file.as_ref(), string);
    let refresh = option(p, a.refresh.as_ref(), |d| duration(p, d));
    let load_timeout = option(p, a.load_timeout.as_ref(), |d| duration(p, d));
    let concurrency = option(p, a.concurrency.as_ref(), |n| {
        literal(Literal::usize_suffixed(n.value), n.span)
    });
    let schema = option(p, a.schema.as_ref(), |n| {
        literal(Literal::u32_suffixed(n.value), n.span)
    });
    let dump_interval = option(p, a.dump_interval.as_ref(), |d| duration(p, d));
    let cache_enabled = option(p, a.cache_enabled.as_ref(), |b| {
        let value = b.value;
        quote_spanned!(b.span=> #value)
    });
    let delta_threshold = option(p, a.delta_threshold.as_ref(), |n| {
        literal(Literal::usize_suffixed(n.value), n.span)
    });
    let delta_ttl = option(p, a.delta_ttl.as_ref(), |d| duration(p, d));
    let max_entries = option(p, a.max_entries.as_ref(), |n| {
        literal(Literal::usize_suffixed(n.value), n.span)
    });
    let not_found_ttl = option(p, a.not_found_ttl.as_ref(), |d| duration(p, d));
    quote! {
        #p::Attributes {
            bucket: #bucket,
            file: #file,
            refresh: #refresh,
            load_timeout: #load_timeout,
            concurrency: #concurrency,
            schema: #schema,
            dump_interval: #dump_interval,
            cache_enabled: #cache_enabled,
            delta_threshold: #delta_threshold,
            delta_ttl: #delta_ttl,
            max_entries: #max_entries,
            not_found_ttl: #not_found_ttl,
        }
    }
}

fn option<T>(
    p: &TokenStream,
    value: Option<&Spanned<T>>,
    to_tokens: impl FnOnce(&Spanned<T>) -> TokenStream,
) -> TokenStream {
    match value {
        Some(value) => {
            let tokens = to_tokens(value);
            quote!(#p::Some(#tokens))
        }
        None => quote!(#p::None),
    }
}

fn string(value: &Spanned<String>) -> TokenStream {
    literal(Literal::string(&value.value), value.span)
}

fn duration(p: &TokenStream, value: &Spanned<Duration>) -> TokenStream {
    let secs = literal(Literal::u64_suffixed(value.value.as_secs()), value.span);
    let nanos = literal(
        Literal::u32_suffixed(value.value.subsec_nanos()),
        value.span,
    );
    quote_spanned!(value.span=> #p::Duration::new(#secs, #nanos))
}

/// `tokens` with every span set to `span`: rustc points at a whole where-predicate only if all
/// of its tokens come from one place.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let TokenTree::Group(group) = &token {
                let mut respanned = Group::new(group.delimiter(), respan(group.stream(), span));
                respanned.set_span(span);
                token = TokenTree::Group(respanned);
            } else {
                token.set_span(span);
            }
            token
        })
        .collect()
}

fn literal(mut literal: Literal, span: Span) -> TokenStream {
    literal.set_span(span);
    quote!(#literal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(args: TokenStream, item: TokenStream) -> String {
        cache_worker(args, item).to_string()
    }

    const BINDING_FNS: &[&str] = &[
        "async fn start (self)",
        "fn builder (self)",
        "async fn get (key :",
        "async fn fetch (key :",
        "fn peek < Q > (key : & Q)",
        "fn insert (key :",
        "fn invalidate < Q > (key : & Q)",
        "fn keys ()",
        "fn len ()",
        "fn subscribe ()",
        "fn version ()",
        "fn changes_since (since :",
        "fn stats ()",
        "fn worker ()",
        "async fn refresh_all ()",
        "async fn shutdown ()",
    ];

    /// `cargo test -p cache-worker-derive -- --nocapture expansion_of_the_spec_example` shows
    /// the glue (pipe it through rustfmt to read it).
    #[test]
    fn expansion_of_the_spec_example() {
        let out = expand(
            quote!(bucket = "widgets", file = "widgets.dump", refresh = "15m"),
            quote!(
                pub struct WidgetStore {
                    api: ApiClient,
                }
            ),
        );
        println!("{out}");
        assert!(out.starts_with("pub struct WidgetStore { api : ApiClient , }"));
        assert!(out.contains(
            "impl WidgetStore where WidgetStore : :: cache_worker :: __private :: CacheWorker"
        ));
        assert!(out.contains("bucket : \"widgets\""));
        assert!(out.contains("file : :: cache_worker :: __private :: Some (\"widgets.dump\")"));
        assert!(out.contains(
            "refresh : :: cache_worker :: __private :: Some (:: cache_worker :: __private :: \
             Duration :: new (900u64 , 0u32))"
        ));
        assert!(out.contains("load_timeout : :: cache_worker :: __private :: None"));
        assert!(out.contains(
            "static __CACHE_WORKER_SLOT : :: cache_worker :: __private :: Slot < WidgetStore >"
        ));
        for function in BINDING_FNS {
            assert!(out.contains(&format!("pub {function}")), "{function}");
        }
        assert!(!out.contains("compile_error"));
    }

    #[test]
    fn functions_take_the_struct_visibility() {
        let out = expand(
            quote!(bucket = "w"),
            quote!(
                pub(crate) struct W;
            ),
        );
        for function in BINDING_FNS {
            assert!(
                out.contains(&format!("pub (crate) {function}")),
                "{function}"
            );
        }
        let out = expand(
            quote!(bucket = "w"),
            quote!(
                struct W;
            ),
        );
        assert!(out.contains("] async fn start (self)"), "{out}");
        assert!(!out.contains("pub async fn start"), "{out}");
    }

    #[test]
    fn crate_path_replaces_cache_worker() {
        let out = expand(
            quote!(bucket = "w", crate = "::framework::engine"),
            quote!(
                struct W;
            ),
        );
        assert!(out.contains(":: framework :: engine :: __private :: Slot < W >"));
        assert!(!out.contains(":: cache_worker ::"), "{out}");
    }

    #[test]
    fn attribute_errors_keep_the_item_and_the_glue() {
        let out = expand(
            quote!(refresh = "soon"),
            quote!(
                pub struct W;
            ),
        );
        assert!(out.starts_with("pub struct W ;"), "{out}");
        assert!(out.contains("fn __cache_worker_slot"), "{out}");
        assert_eq!(out.matches("compile_error").count(), 2, "{out}");
    }

    #[test]
    fn a_non_struct_is_kept_and_gets_no_glue() {
        let out = expand(
            quote!(bucket = "w"),
            quote!(
                enum E {
                    A,
                }
            ),
        );
        assert!(out.starts_with("enum E { A , }"), "{out}");
        assert!(!out.contains("__cache_worker_slot"), "{out}");
        assert!(out.contains("goes on a struct, not on an enum"), "{out}");
    }

    #[test]
    fn a_generic_struct_is_kept_and_gets_no_glue() {
        let out = expand(
            quote!(bucket = "w"),
            quote!(
                struct G<T> {
                    t: T,
                }
            ),
        );
        assert!(out.starts_with("struct G < T > { t : T , }"), "{out}");
        assert!(!out.contains("__cache_worker_slot"), "{out}");
        assert!(out.contains("cannot be used on a generic struct"), "{out}");
    }
}

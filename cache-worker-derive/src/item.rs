//! The item under `#[cache_worker]`: it must be a non-generic struct.

use proc_macro2::{Span, TokenStream};
use syn::spanned::Spanned as _;
use syn::{Ident, Item, ItemStruct, Visibility};

use crate::ctxt::Ctxt;

/// What the expansion needs from the annotated struct.
pub(crate) struct Target {
    pub(crate) ident: Ident,
    /// Given to the generated associated functions, so they are exactly as visible as the type.
    pub(crate) vis: Visibility,
}

/// Checks the annotated item. `None` (with an error recorded) if no glue can be generated
/// for it; `Some` otherwise, even when the attribute's arguments had errors.
pub(crate) fn check(cx: &mut Ctxt, item: TokenStream) -> Option<Target> {
    let item = match syn::parse2::<Item>(item) {
        Ok(item) => item,
        Err(error) => {
            // rustc has parsed the item already, so this is syntax syn does not know yet.
            cx.push(error);
            return None;
        }
    };
    match item {
        Item::Struct(item) => check_struct(cx, item),
        other => {
            let (what, span) = describe(&other);
            cx.error_at(
                span,
                format!(
                    "#[cache_worker] goes on a struct, not on {what}: the struct holds the \
                     worker's state and implements `CacheWorker`"
                ),
            );
            None
        }
    }
}

fn check_struct(cx: &mut Ctxt, item: ItemStruct) -> Option<Target> {
    if !item.generics.params.is_empty() {
        cx.error_spanned_by(
            &item.generics,
            format!(
                "#[cache_worker] cannot be used on a generic struct: the process-wide instance \
                 of `{}` lives in a `static`, and a static cannot be generic; remove the \
                 generic parameters, or leave out #[cache_worker] and start each instance of \
                 the generic worker with `Worker::builder(state).start()`",
                item.ident
            ),
        );
        return None;
    }
    Some(Target {
        ident: item.ident,
        vis: item.vis,
    })
}

/// What the item is, and the span of the keyword that says so.
fn describe(item: &Item) -> (&'static str, Span) {
    match item {
        Item::Enum(item) => ("an enum", item.enum_token.span),
        Item::Union(item) => ("a union", item.union_token.span),
        Item::Fn(item) => ("a function", item.sig.fn_token.span),
        Item::Trait(item) => ("a trait", item.trait_token.span),
        Item::Impl(item) => ("an impl block", item.impl_token.span),
        Item::Mod(item) => ("a module", item.mod_token.span),
        Item::Type(item) => ("a type alias", item.type_token.span),
        Item::Const(item) => ("a constant", item.const_token.span),
        Item::Static(item) => ("a static", item.static_token.span),
        Item::Use(item) => ("a `use` declaration", item.use_token.span),
        other => ("this item", other.span()),
    }
}

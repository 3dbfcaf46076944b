//! Collects every error of one macro invocation, so that they are reported together.

use proc_macro2::Span;
use std::fmt::Display;

/// The errors found so far, folded into one `syn::Error` with `combine`.
///
/// Parsing and checking go on after an error, so a user with three mistakes in one attribute
/// sees three messages in one build, each at its own span.
#[derive(Default)]
pub(crate) struct Ctxt {
    errors: Option<syn::Error>,
}

impl Ctxt {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Records an error at one span.
    pub(crate) fn error_at(&mut self, span: Span, message: impl Display) {
        self.push(syn::Error::new(span, message));
    }

    /// Records an error covering the tokens of `tokens`.
    pub(crate) fn error_spanned_by(&mut self, tokens: impl quote::ToTokens, message: impl Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    /// Records an error (which may itself hold several messages).
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.errors {
            Some(errors) => errors.combine(error),
            None => self.errors = Some(error),
        }
    }

    /// `Err` with every recorded error, or `Ok` if there was none.
    pub(crate) fn check(self) -> syn::Result<()> {
        match self.errors {
            Some(errors) => Err(errors),
            None => Ok(()),
        }
    }
}

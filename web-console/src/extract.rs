//! axum extractors that keep the API's contract, "every bad input is a 4xx with a reason in
//! JSON": [`Caller`] authenticates (bearer token or console session with its CSRF token; a
//! read-only caller may only read), [`StrictQuery`] parses a query string into a typed struct
//! that refuses unknown and repeated parameters.
use crate::auth::{caller, error, Caller};
use crate::Console;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::Response;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use std::sync::Arc;

impl FromRequestParts<Arc<Console>> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, c: &Arc<Console>) -> Result<Self, Response> {
        caller(c, &parts.method, &parts.headers)
    }
}

/// A query string as `T` (whose serde attributes deny unknown fields); a repeated, unknown or
/// malformed parameter is a 400 naming it.
#[derive(Debug, Clone)]
pub struct StrictQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for StrictQuery<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        parse(parts.uri.query().unwrap_or("")).map(Self)
    }
}

/// [`StrictQuery`]'s parser, for handlers that take the raw query (the console's pages).
#[allow(clippy::result_large_err)]
pub fn parse<T: DeserializeOwned>(query: &str) -> Result<T, Response> {
    serde_urlencoded::from_str(query)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("query string: {e}")))
}

/// For numeric query parameters: an empty value (`page=`, as a form sends it) is absent; a
/// number may come as text (a query string) or as a number (JSON).
pub fn empty_as_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrText {
        Num(usize),
        Text(String),
    }
    match Option::<NumOrText>::deserialize(d)? {
        None => Ok(None),
        Some(NumOrText::Num(n)) => Ok(Some(n)),
        Some(NumOrText::Text(t)) if t.trim().is_empty() => Ok(None),
        Some(NumOrText::Text(t)) => {
            t.trim().parse().map(Some).map_err(|_| {
                serde::de::Error::custom(format!("{t:?} is not a positive whole number"))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::Filter;

    #[test]
    fn strict_query_refuses_unknown_repeated_and_malformed() {
        let f: Filter = parse("state=failed&page=2&per_page=").unwrap();
        assert_eq!(f.state.as_deref(), Some("failed"));
        assert_eq!((f.page, f.per_page), (Some(2), None));
        for bad in ["nope=1", "state=a&state=b", "page=x", "page=-1"] {
            assert!(parse::<Filter>(bad).is_err(), "{bad}");
        }
        let f: Filter = parse("").unwrap();
        assert!(f.state.is_none() && f.page.is_none());
    }
}

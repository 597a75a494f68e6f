//! The dashboard at `/`: server-rendered pages from `templates/`, no script needed to
//! read them. It reads through the API's functions, with the same token and scope.

use std::sync::Arc;

use axum::Router;

use crate::http::App;

/// The dashboard's templates, loaded once.
pub struct Templates {
    pub environment: minijinja::Environment<'static>,
}

impl Templates {
    pub fn new() -> Templates {
        Templates {
            environment: minijinja::Environment::new(),
        }
    }
}

impl Default for Templates {
    fn default() -> Templates {
        Templates::new()
    }
}

/// The pages that need a token.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
}

/// The login form.
pub fn login_routes() -> Router<Arc<App>> {
    Router::new()
}

//! The route table. [`ROUTES`] is data: the router dispatches from it, and a test checks it
//! against `docs/api/openapi.yaml`, so the code and the contract cannot drift apart.

use crate::error::HttpError;

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `{"status":"ok"}`.
    Health,
    /// Daemon version.
    Version,
    /// All services.
    ListServices,
    /// Create a service; 409 if the name exists (`POST /v1/services`).
    CreateService,
    /// One service.
    GetService,
    /// Create or replace a service.
    PutService,
    /// Drain and remove a service.
    DeleteService,
    /// All live VMs.
    ListVms,
    /// One VM.
    GetVm,
    /// Kill a VM.
    DeleteVm,
    /// Prometheus text.
    Metrics,
    /// Drain and stop the daemon, as SIGTERM does.
    Drain,
    /// Bring back a service's definition from before its last replacement.
    RollbackService,
    /// Store an uploaded wasm module or guest image.
    UploadArtifact,
    /// All stored artifacts.
    ListArtifacts,
    /// Remove a stored artifact no service uses.
    DeleteArtifact,
}

/// One route: a method, a path template (`{param}` matches one non-empty segment) and what
/// it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// HTTP method.
    pub method: &'static str,
    /// Path template, OpenAPI style.
    pub path: &'static str,
    /// Handler.
    pub endpoint: Endpoint,
}

const fn route(method: &'static str, path: &'static str, endpoint: Endpoint) -> Route {
    Route {
        method,
        path,
        endpoint,
    }
}

/// Every route the API serves.
pub const ROUTES: &[Route] = &[
    route("GET", "/v1/health", Endpoint::Health),
    route("GET", "/v1/version", Endpoint::Version),
    route("GET", "/v1/services", Endpoint::ListServices),
    route("POST", "/v1/services", Endpoint::CreateService),
    route("GET", "/v1/services/{name}", Endpoint::GetService),
    route("PUT", "/v1/services/{name}", Endpoint::PutService),
    route("DELETE", "/v1/services/{name}", Endpoint::DeleteService),
    route("GET", "/v1/vms", Endpoint::ListVms),
    route("GET", "/v1/vms/{id}", Endpoint::GetVm),
    route("DELETE", "/v1/vms/{id}", Endpoint::DeleteVm),
    route("GET", "/metrics", Endpoint::Metrics),
    route("POST", "/v1/drain", Endpoint::Drain),
    route(
        "POST",
        "/v1/services/{name}/rollback",
        Endpoint::RollbackService,
    ),
    route("POST", "/v1/artifacts", Endpoint::UploadArtifact),
    route("GET", "/v1/artifacts", Endpoint::ListArtifacts),
    route("DELETE", "/v1/artifacts/{digest}", Endpoint::DeleteArtifact),
];

/// A matched route and its one path parameter, if the template has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched<'p> {
    /// Handler.
    pub endpoint: Endpoint,
    /// The `{param}` segment.
    pub param: Option<&'p str>,
}

/// The `{param}` segment if `path` fits `template`; `Some(None)` for a fit without one.
fn fit<'p>(template: &str, path: &'p str) -> Option<Option<&'p str>> {
    let mut param = None;
    let mut t = template.split('/');
    let mut p = path.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(param),
            (Some(ts), Some(ps)) => {
                if ts.starts_with('{') && ts.ends_with('}') {
                    if ps.is_empty() {
                        return None;
                    }
                    param = Some(ps);
                } else if ts != ps {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

/// Find the route for `method` and `path`: 404 if no template fits the path, 405 (with the
/// methods that would do) if some fit but not for this method.
pub fn find<'p>(method: &str, path: &'p str) -> Result<Matched<'p>, HttpError> {
    // HEAD is GET without the body (hyper leaves the body out).
    let method = if method == "HEAD" { "GET" } else { method };
    let mut allowed: Vec<&str> = Vec::new();
    for r in ROUTES {
        if let Some(param) = fit(r.path, path) {
            if r.method == method {
                return Ok(Matched {
                    endpoint: r.endpoint,
                    param,
                });
            }
            allowed.push(r.method);
        }
    }
    if allowed.is_empty() {
        Err(HttpError::no_route(path))
    } else {
        Err(HttpError::method_not_allowed(method, path, &allowed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn matches_templates_and_params() {
        let m = find("GET", "/v1/services/hello").unwrap();
        assert_eq!(m.endpoint, Endpoint::GetService);
        assert_eq!(m.param, Some("hello"));
        assert_eq!(find("GET", "/v1/services").unwrap().param, None);
        assert_eq!(
            find("DELETE", "/v1/vms/hello-1").unwrap().endpoint,
            Endpoint::DeleteVm
        );
        assert_eq!(find("GET", "/metrics").unwrap().endpoint, Endpoint::Metrics);
        assert_eq!(
            find("HEAD", "/v1/health").unwrap().endpoint,
            Endpoint::Health
        );
        assert_eq!(
            find("HEAD", "/v1/services/x").unwrap().endpoint,
            Endpoint::GetService
        );
    }

    #[test]
    fn unknown_paths_are_404() {
        for p in [
            "/",
            "/v1",
            "/v1/services/",
            "/v1/services/a/b",
            "/v2/health",
            "/v1/health/",
            "//v1/health",
        ] {
            let e = find("GET", p).unwrap_err();
            assert_eq!(e.status(), StatusCode::NOT_FOUND, "{p}");
        }
    }

    #[test]
    fn wrong_method_is_405_with_allow() {
        let e = find("POST", "/v1/services/x").unwrap_err();
        assert_eq!(e.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(e.allow(), Some("GET, PUT, DELETE"));
        let e = find("DELETE", "/v1/health").unwrap_err();
        assert_eq!(e.allow(), Some("GET"));
    }

    #[test]
    fn every_route_is_unique() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(
                    (a.method, a.path) != (b.method, b.path),
                    "{} {}",
                    a.method,
                    a.path
                );
            }
        }
    }
}

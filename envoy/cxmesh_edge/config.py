"""Generates the Envoy configuration of the edge.

One listener serves REST (grpc_json_transcoder, from the protos' google.api.http
annotations), gRPC for every service on the same port, server reflection, `/healthz`
(200 only while every upstream passes its gRPC health check), JWT validation of bearer
tokens, CORS, access logs and a local rate limit. Unknown paths get a clean 404.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2

ADMIN_PORT_DEFAULT = 9901
REST_BODY_LIMIT_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Upstream:
    """One service and the addresses of its replicas."""

    name: str
    packages: tuple[str, ...]
    endpoints: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class EdgeConfig:
    descriptor_set: Path
    upstreams: tuple[Upstream, ...]
    jwks_file: Path
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    admin_port: int = ADMIN_PORT_DEFAULT
    jwt_issuer: str = "cxmesh-dev"
    jwt_audience: str = "cxmesh"
    # Token bucket of the local rate limit, per Envoy instance.
    rate_limit_per_second: int = 20000
    cors_allowed_origins: tuple[str, ...] = ("*",)
    access_log: bool = True
    # The upstream serving reflection and the grpc.health.v1 of the edge itself.
    reflection_upstream: str = "iam"
    health_check_interval_seconds: float = 1.0


def service_names(descriptor_set: Path) -> list[str]:
    """Every cxmesh service in the descriptor set: the transcoder must know all of them."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    return sorted(
        f"{file.package}.{service.name}"
        for file in files.file
        if file.package.startswith("cxmesh.")
        for service in file.service
    )


GES_BODY_HEADER = "cxmesh-ges-body"
GES_PREFIX = "/engagement/v3/"
# The GES surface (/engagement/v3) answers every error in the GES envelope. The callbacks
# service sends its envelope as the GES_BODY_HEADER trailer; errors raised before it (auth
# at the edge or in the runtime, malformed JSON in the transcoder) get one made here from
# the status and the google.rpc.Status message.
GES_ENVELOPE_LUA = """
local texts = {[400] = "Bad Request", [401] = "Unauthorized", [403] = "Forbidden",
  [404] = "Not Found", [409] = "Conflict", [413] = "Payload Too Large",
  [429] = "Too Many Requests", [503] = "Service Unavailable"}

function envoy_on_request(handle)
  local path = handle:headers():get(":path") or ""
  if string.sub(path, 1, 15) == "GES_PREFIX" then
    handle:streamInfo():dynamicMetadata():set("cxmesh.ges", "corr_id",
      handle:headers():get("x-request-id") or "")
  end
end

-- The (still JSON-escaped) value of the first "message" key, or nil.
local function message_of(body)
  local first = string.find(body, '"message":"', 1, true)
  if first == nil then return nil end
  local i = first + 11
  while i <= #body do
    local c = string.sub(body, i, i)
    if c == "\\\\" then i = i + 2
    elseif c == '"' then return string.sub(body, first + 11, i - 1)
    else i = i + 1 end
  end
  return nil
end

function envoy_on_response(handle)
  local envelope = handle:headers():get("HEADER")
  if envelope ~= nil then
    handle:headers():remove("HEADER")
  else
    local ges = handle:streamInfo():dynamicMetadata():get("cxmesh.ges")
    local status = tonumber(handle:headers():get(":status")) or 500
    if ges == nil or status < 400 then return end
    local body = handle:body(true)
    local message = message_of(body:getBytes(0, body:length())) or texts[status] or "Error"
    envelope = string.format('{"status":{"code":%d,"message":"%s","corrId":"%s"}}',
      status, message, ges["corr_id"] or "")
  end
  handle:headers():replace("content-type", "application/json")
  handle:body(true):setBytes(envelope)
end
""".replace("HEADER", GES_BODY_HEADER).replace("GES_PREFIX", GES_PREFIX)


def _typed(type_name: str, **config: Any) -> dict[str, Any]:
    return {"@type": f"type.googleapis.com/{type_name}", **config}


def _grpc_route(prefix: str, cluster: str) -> dict[str, Any]:
    return {
        "match": {"prefix": prefix},
        "route": {
            "cluster": cluster,
            # Streams (imports, exports, watches) may run long; gRPC deadlines still apply.
            "timeout": "0s",
            "max_stream_duration": {"grpc_timeout_header_max": "0s"},
        },
    }


def _cluster(upstream: Upstream, config: EdgeConfig) -> dict[str, Any]:
    interval = f"{config.health_check_interval_seconds}s"
    return {
        "name": upstream.name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                explicit_http_config={"http2_protocol_options": {}},
            )
        },
        "load_assignment": {
            "cluster_name": upstream.name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": host, "port_value": port}}
                            }
                        }
                        for host, port in upstream.endpoints
                    ]
                }
            ],
        },
        "health_checks": [
            {
                "timeout": "1s",
                "interval": interval,
                "no_traffic_interval": interval,
                "unhealthy_threshold": 1,
                "healthy_threshold": 1,
                "grpc_health_check": {},
            }
        ],
    }


def _access_log() -> list[dict[str, Any]]:
    return [
        {
            "name": "envoy.access_loggers.stdout",
            "typed_config": _typed(
                "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                log_format={
                    "json_format": {
                        "time": "%START_TIME%",
                        "method": "%REQ(:METHOD)%",
                        # The path without its query: queries may carry personal data.
                        "path": "%REQ_WITHOUT_QUERY(X-ENVOY-ORIGINAL-PATH?:PATH)%",
                        "upstream_path": "%REQ_WITHOUT_QUERY(:PATH)%",
                        "status": "%RESPONSE_CODE%",
                        "grpc_status": "%GRPC_STATUS%",
                        "duration_ms": "%DURATION%",
                        "upstream": "%UPSTREAM_CLUSTER%",
                        "trace_id": "%REQ(TRACEPARENT)%",
                        "request_id": "%REQ(X-REQUEST-ID)%",
                    },
                    "formatters": [
                        {
                            "name": "envoy.formatter.req_without_query",
                            "typed_config": _typed(
                                "envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery"
                            ),
                        }
                    ],
                },
            ),
        }
    ]


TRANSCODER = "envoy.filters.http.grpc_json_transcoder"


def _transcoder(config: EdgeConfig, *, print_zero_values: bool) -> dict[str, Any]:
    return _typed(
        "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
        proto_descriptor=str(config.descriptor_set),
        services=service_names(config.descriptor_set),
        convert_grpc_status=True,
        print_options={
            "add_whitespace": False,
            "always_print_primitive_fields": print_zero_values,
            "always_print_enums_as_ints": False,
            "preserve_proto_field_names": False,
        },
        request_validation_options={
            # Unknown REST paths get a 404 here rather than reaching a backend.
            "reject_unknown_method": True,
            # GES clients send cache-busters such as `_=`; they are ignored.
            "reject_unknown_query_parameters": False,
        },
        ignore_unknown_query_parameters=True,
        # REST file uploads (imports) and downloads (exports, error reports) are
        # buffered whole by the transcoder; larger files go over gRPC streams.
        max_request_body_size=REST_BODY_LIMIT_BYTES,
        max_response_body_size=REST_BODY_LIMIT_BYTES,
    )


def _http_filters(config: EdgeConfig) -> list[dict[str, Any]]:
    return [
        {
            "name": "envoy.filters.http.health_check",
            "typed_config": _typed(
                "envoy.extensions.filters.http.health_check.v3.HealthCheck",
                pass_through_mode=False,
                headers=[{"name": ":path", "string_match": {"exact": "/healthz"}}],
                # At least one healthy replica per upstream. Envoy compares the healthy count
                # with total × percent / 100 rounded down, so the percent is 100 / replicas.
                cluster_min_healthy_percentages={
                    upstream.name: {"value": 100.0 / max(1, len(upstream.endpoints))}
                    for upstream in config.upstreams
                },
            ),
        },
        {
            "name": "envoy.filters.http.cors",
            "typed_config": _typed("envoy.extensions.filters.http.cors.v3.Cors"),
        },
        {
            "name": "envoy.filters.http.local_ratelimit",
            "typed_config": _typed(
                "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                stat_prefix="edge_rate_limit",
                token_bucket={
                    "max_tokens": config.rate_limit_per_second,
                    "tokens_per_fill": config.rate_limit_per_second,
                    "fill_interval": "1s",
                },
                filter_enabled={"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
                filter_enforced={"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            ),
        },
        {
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": _typed(
                "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                providers={
                    "cxmesh": {
                        "issuer": config.jwt_issuer,
                        "audiences": [config.jwt_audience],
                        "local_jwks": {"filename": str(config.jwks_file)},
                        # The services validate the token again: a service reached
                        # directly is protected exactly as through the edge.
                        "forward": True,
                    }
                },
                rules=[
                    {
                        "match": {"prefix": "/"},
                        # A bad token is refused here; a missing one is left to the service,
                        # which knows whether the RPC takes an API key or is public.
                        "requires": {
                            "requires_any": {
                                "requirements": [{"provider_name": "cxmesh"}, {"allow_missing": {}}]
                            }
                        },
                    }
                ],
            ),
        },
        {
            # GES error envelopes (see GES_ENVELOPE_LUA). Listed before the transcoder, it
            # sees requests before they are rewritten and responses after they are rendered.
            "name": "envoy.filters.http.lua",
            "typed_config": _typed(
                "envoy.extensions.filters.http.lua.v3.Lua",
                default_source_code={"inline_string": GES_ENVELOPE_LUA},
            ),
        },
        {
            "name": TRANSCODER,
            "typed_config": _transcoder(config, print_zero_values=False),
        },
        {
            "name": "envoy.filters.http.router",
            "typed_config": _typed("envoy.extensions.filters.http.router.v3.Router"),
        },
    ]


def _ges_routes(config: EdgeConfig) -> list[dict[str, Any]]:
    """GES clients read `"openFor": 0`, `"offerImmediateCallback": false` and `"slots": []`:
    the GES paths are transcoded with zero values printed (the transcoder takes its
    per-route settings from the route of the original path)."""
    if not any(u.name == "callbacks" for u in config.upstreams):
        return []
    return [
        {
            "match": {"prefix": GES_PREFIX},
            "route": {"cluster": "callbacks", "timeout": "30s"},
            "typed_per_filter_config": {TRANSCODER: _transcoder(config, print_zero_values=True)},
        }
    ]


def render(config: EdgeConfig) -> dict[str, Any]:
    routes = [
        _grpc_route(f"/{package}.", upstream.name)
        for upstream in config.upstreams
        for package in upstream.packages
    ]
    routes += [
        *_ges_routes(config),
        _grpc_route("/grpc.reflection.", config.reflection_upstream),
        _grpc_route("/grpc.health.v1.Health/", config.reflection_upstream),
        # CORS preflights of REST paths: the cors filter acts only on routes with a route
        # entry, and answers them itself; they never reach the cluster.
        {
            "match": {
                "prefix": "/",
                "headers": [{"name": ":method", "string_match": {"exact": "OPTIONS"}}],
            },
            "route": {"cluster": config.reflection_upstream},
        },
        # Everything else: a clean 404 (REST paths are re-routed by the transcoder first).
        {
            "match": {"prefix": "/"},
            "direct_response": {
                "status": 404,
                "body": {"inline_string": '{"code":5,"message":"not found"}'},
            },
        },
    ]
    connection_manager = _typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix="edge",
        codec_type="AUTO",
        generate_request_id=True,
        # jwt_authn answers 403 for a token of another audience; a token that is not for us
        # is a failed authentication (401). jwt_authn is the only source of local 403s here.
        local_reply_config={
            "mappers": [
                {
                    "filter": {
                        "status_code_filter": {
                            "comparison": {
                                "op": "EQ",
                                "value": {"default_value": 403, "runtime_key": "edge.jwt_403"},
                            }
                        }
                    },
                    "status_code": 401,
                }
            ]
        },
        access_log=_access_log() if config.access_log else [],
        route_config={
            "name": "edge",
            "virtual_hosts": [
                {
                    "name": "cxmesh",
                    "domains": ["*"],
                    "routes": routes,
                    "typed_per_filter_config": {
                        "envoy.filters.http.cors": _typed(
                            "envoy.extensions.filters.http.cors.v3.CorsPolicy",
                            allow_origin_string_match=[
                                {"safe_regex": {"regex": ".*"}}
                                if origin == "*"
                                else {"exact": origin}
                                for origin in config.cors_allowed_origins
                            ],
                            allow_methods="GET, POST, PATCH, DELETE, OPTIONS",
                            allow_headers="authorization, content-type, accept, x-api-key, x-request-id, traceparent, grpc-timeout, x-grpc-web",
                            expose_headers="grpc-status, grpc-message, x-request-id",
                            max_age="600",
                        )
                    },
                }
            ],
        },
        http_filters=_http_filters(config),
    )
    return {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": config.admin_port}}
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "edge",
                    "address": {
                        "socket_address": {
                            "address": config.listen_host,
                            "port_value": config.listen_port,
                        }
                    },
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": connection_manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [_cluster(upstream, config) for upstream in config.upstreams],
        },
    }


def write(config: EdgeConfig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(render(config), indent=1))
    return path

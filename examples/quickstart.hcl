# a3s-gateway demo: `make run` starts the gateway on this file (examples/run_demo.py prints what to try).
#
#   - streaming: an OpenAI-style model server (demo_backend.py) streams one SSE event per token through the gateway;
#   - scale-to-zero: no model runs at start. The first request is held while the gateway starts one (the `process`
#     executor runs demo_backend.py on a free port), then forwarded; after 30 s without requests it is stopped again;
#   - rate limiting: 5 requests per second per client, bursts of 10, RateLimit-* headers on every answer;
#   - the admin API on 127.0.0.1:9901: /api/gateway/services shows the replicas, /metrics the Prometheus metrics.

entrypoints "web" {
  address = "127.0.0.1:8080"
}

routers "llm" {
  rule        = "PathPrefix(`/v1`)"
  service     = "llm"
  middlewares = ["rate-limit"]
}

services "llm" {
  load_balancer {
    strategy = "least-connections"
  }

  scaling {
    min_replicas          = 0
    max_replicas          = 2
    container_concurrency = 10
    scale_down_delay_secs = 30
    buffer_enabled        = true
    executor              = "process"

    process {
      # relative to this file's directory; run_demo.py sets A3S_DEMO_PYTHON to its own interpreter
      command     = ["${A3S_DEMO_PYTHON:-python3}", "demo_backend.py", "--port", "{port}", "--name", "replica-{replica}"]
      health_path = "/health"
    }
  }
}

middlewares "rate-limit" {
  type  = "rate-limit"
  rate  = 5
  burst = 10
}

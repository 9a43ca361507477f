# An LLM gateway: `make run CONFIG=examples/llm-gateway.hcl` (examples/run_demo.py starts the two demo model servers
# on 8001/8002; the third model is started by the gateway on demand).
#
#   - routing by model: the request body's "model" picks the service (SPEC §16.1); the access log (stdout) shows
#     each request's model and its input/output tokens, read from the JSON or SSE response (§16.2);
#   - model-server-aware balancing: "llama-3-8b" runs on two demo model servers; the gateway scrapes their vLLM
#     metrics (/metrics) every 250 ms and sends each request to the one with the shortest queue and the least
#     KV-cache use; prompts that start alike go to the same server (prefix affinity, its cache holds the prefix);
#   - scale-to-zero with keep-alive: "qwen-*" models run on a replica started on the first request; loading takes
#     4 s, and while a streaming request waits the gateway answers 200 at once and sends `: queued 1s`, `: queued 2s`
#     ... comments (clients and proxies with short idle timeouts keep the connection), then the model's own stream;
#   - the admin API on 127.0.0.1:9901: /api/gateway/backends shows the scraped queue and KV-cache values,
#     /metrics the gateway_llm_* and gateway_backend_queue_depth metrics.
#
# try: curl -N http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' -d '{"model": "llama-3-8b", "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "Hello"}]}'
# try: curl -N http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' -d '{"model": "qwen-2.5-7b", "stream": true, "messages": [{"role": "user", "content": "Hello"}]}'
# try: curl -s http://127.0.0.1:9901/api/gateway/backends
# try: curl -s http://127.0.0.1:9901/metrics | grep -E 'gateway_llm_|gateway_backend_queue_depth'

entrypoints "web" {
  address = "127.0.0.1:8080"
}

access_log {}

routers "llama" {
  rule    = "PathPrefix(`/v1`) && Model(`llama-3-8b`)"
  service = "llama"
}

routers "qwen" {
  rule    = "PathPrefix(`/v1`) && ModelRegexp(`^qwen-`)"
  service = "qwen"

  ai {
    queued_keepalive = "1s"
  }
}

services "llama" {
  load_balancer {
    strategy = "inference"
    servers  = [{ url = "http://127.0.0.1:8001" }, { url = "http://127.0.0.1:8002" }]

    inference {
      metrics_path    = "/metrics"
      scrape_interval = "250ms"
      max_queue       = 16
    }
  }
}

services "qwen" {
  scaling {
    min_replicas          = 0
    max_replicas          = 2
    scale_down_delay_secs = 60
    buffer_enabled        = true
    buffer_timeout_secs   = 60
    executor              = "process"

    process {
      # relative to this file's directory; run_demo.py sets A3S_DEMO_PYTHON to its own interpreter
      command     = ["${A3S_DEMO_PYTHON:-python3}", "demo_backend.py", "--port", "{port}", "--name", "qwen-{replica}",
                     "--startup-delay", "4"]
      health_path = "/health"
    }
  }
}

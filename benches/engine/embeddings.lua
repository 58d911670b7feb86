-- wrk script: the engine bench's embeddings request (1536 dimensions, the gateway's default).
wrk.method = "POST"
wrk.path = "/v1/embeddings"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer hs_bench"
wrk.body = '{"model": "text-embedding-3-small", "input": "a short document to embed"}'

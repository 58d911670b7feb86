-- wrk script: the engine bench's chat request (max_tokens 1) under one API key.
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer hs_bench"
wrk.body = '{"model": "gpt-4.1", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 1}'

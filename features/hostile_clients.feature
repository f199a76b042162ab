Feature: Clients that never finish cannot make the worker unreachable
  Half-sent request headers, idle kept-alive connections and bodies
  shorter than their Content-Length are cut after configurable timeouts,
  and at the connection cap the connections without a request in flight
  give way first, so /health and authenticated calls still get in while
  streams keep flowing (issue 13 point 1).

  @WORKER-4420 @serial
  # The issue asks for 40 s; the cap makes room at once, so 5 s is asked
  # here (the 10 s header timeout alone would take longer).
  Scenario: Two thousand half-open connections against a file limit of 1024 leave the worker reachable
    Given a worker configured for the tiny test model
    And the worker's open-file limit is 1024
    When the worker is started
    And I note the worker's resident memory
    And 2000 connections each send half a request header and hold it
    Then "/health" answers 200 within 5 seconds without a token
    And "/worker/ready" answers 200 within 5 seconds with the token
    When those connections are closed
    Then the worker's resident memory is back within 32 MiB of the noted value within 20 seconds
    And the ready answer still shows the sealed shard

  @WORKER-4420
  Scenario: A body shorter than its Content-Length ends in 408 after the body timeout
    Given a worker configured for the tiny test model
    And the configuration sets "body_read_timeout_ms" to 500
    When the worker is started
    And I send an execute whose Content-Length promises 100 bytes but only 10 arrive
    Then the answer is 408 with the error code "REQUEST_TIMEOUT" within 5 seconds

  @WORKER-4420
  Scenario: Half-sent headers are cut after the header timeout while a stream keeps flowing
    Given a worker configured for the larger test model
    And the configuration sets "header_read_timeout_ms" to 100
    When the worker is started
    And I start executing "Once upon a time" with max_tokens 2000
    # The stream outlasts the timeout however fast the backend decodes
    # (2,000 tokens of this model took 285 ms on an H100).
    And I make the next engine step hang for 500 ms
    And a connection sends half a request header and holds it
    Then the worker closes that connection within 3 seconds
    When I wait for the stream to finish
    Then the stream ends with an "end" event
    And the stream lasted more than 3 times the header timeout

  # Issue 13 point 5: hyper answers what it cannot parse by itself, before
  # any route; those answers carry the error body every refusal carries.
  @WORKER-4950
  Scenario: A request line that is not HTTP gets 400 with the error body
    Given a worker serving the tiny test model
    When a connection sends a request line that is not HTTP
    Then the answer is 400 with the error code "INVALID_PARAMS" within 5 seconds
    And the ready answer still shows the sealed shard

  @WORKER-4950
  Scenario: Headers larger than the worker reads get 431 with the error body
    Given a worker serving the tiny test model
    When a connection sends headers larger than the worker reads
    Then the answer is 431 with the error code "PAYLOAD_TOO_LARGE" within 5 seconds
    And the ready answer still shows the sealed shard

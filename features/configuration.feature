# Spec §12: configuration and environment.
Feature: Configuration
  The worker is configured by one JSON file, by flags that override it, and by
  a few environment variables. Anything invalid stops start-up at once with a
  message that names the field and what would be accepted.

  @WORKER-4980 @WORKER-4981
  Scenario: A complete JSON configuration file starts the worker
    Given a worker serving the tiny test model
    When I GET "/health" without a token
    Then the response status is 200

  @WORKER-4980
  Scenario: Flags override the configuration file
    Given a worker configured for the tiny test model
    And the configuration sets "worker_id" to "from-file"
    And the worker is given the flag "--worker-id" "from-flag"
    When the worker is started
    Then the worker becomes ready
    And the readiness callback received a "ready" announcement
    And the announcement JSON at "/worker_id" is "from-flag"

  @WORKER-4981 @WORKER-4983
  Scenario: Each missing required field is named
    Then for each required field, a configuration without it stops the worker with code 2 naming the field:
      | field                  |
      | worker_id              |
      | pool_id                |
      | model_path             |
      | rpc_port               |
      | readiness_callback_url |
      | gpu_device             |

  @WORKER-4983
  Scenario: An invalid value stops start-up naming the field and the accepted range
    Given a worker configured for the tiny test model
    And the configuration sets "slots_total" to 0
    When the worker is started
    Then the worker exits with code 2 within 10 seconds
    And the worker log mentions "slots_total"

  @WORKER-4982
  Scenario: The optional fields are accepted and take effect
    Given a worker configured for the tiny test model
    And the configuration sets "max_tokens" to 8
    And the configuration sets "slots_total" to 1
    And the configuration sets "execution_timeout_ms" to 60000
    And the configuration sets "max_prompt_len" to 1000
    When the worker is started
    And I execute "Hello" with max_tokens 9
    Then the error code is "INVALID_PARAMS"
    And the error message mentions "max_tokens"

  @WORKER-4983
  Scenario: An unknown configuration key stops start-up naming it
    Given a worker configured for the tiny test model
    And the configuration sets "max_tokenz" to 8
    When the worker is started
    Then the worker exits with code 2 within 10 seconds
    And the worker log mentions "max_tokenz"

  @WORKER-4981 @WORKER-4990
  Scenario: WORKER_GPU_DEVICE gives the required gpu_device
    Given a worker configured for the tiny test model
    And the configuration omits "gpu_device"
    And the environment sets "WORKER_GPU_DEVICE" to "0"
    When the worker is started
    Then the worker becomes ready

  @WORKER-4990
  Scenario: WORKER_BIND_ADDR sets where the worker listens
    Given a worker configured for the tiny test model
    And the configuration omits "rpc_port"
    And the environment sets "WORKER_BIND_ADDR" to the chosen address
    When the worker is started
    Then the worker becomes ready

  @WORKER-4990
  Scenario: WORKER_LOG_LEVEL sets the log level
    Given a worker configured for the tiny test model
    And the environment sets "WORKER_LOG_LEVEL" to "warn"
    When the worker is started
    Then the worker becomes ready
    And no worker log line has level "INFO"

  @WORKER-4990 @gpu
  Scenario: WORKER_GPU_DEVICE picks the device
    Given a worker configured for the tiny test model
    And the configuration omits "gpu_device"
    And the environment sets "WORKER_GPU_DEVICE" to "0"
    When the worker is started
    Then the worker becomes ready

  @WORKER-4991
  Scenario: A malformed WORKER_BIND_ADDR stops start-up
    Given a worker configured for the tiny test model
    And the configuration omits "rpc_port"
    And the environment sets "WORKER_BIND_ADDR" to "not-an-address"
    When the worker is started
    Then the worker exits with code 2 within 10 seconds
    And the worker log mentions "WORKER_BIND_ADDR"

  @WORKER-4991
  Scenario: A privileged port is refused, naming the accepted range
    Given a worker configured for the tiny test model
    And the configuration omits "rpc_port"
    And the environment sets "WORKER_BIND_ADDR" to "127.0.0.1:80"
    When the worker is started
    Then the worker exits with code 2 within 10 seconds
    And the worker log mentions "1024"

  @WORKER-4983
  Scenario: A misspelt engine numerics switch stops start-up on every backend
    Given a worker configured for the tiny test model
    And the environment sets "WORKER_ORCD_TENSOR_DECODE" to "mlp"
    When the worker is started
    Then the worker exits with code 2 within 10 seconds
    And the worker log mentions "WORKER_ORCD_TENSOR_DECODE"

  @WORKER-4980 @source
  Scenario: Help explains every option
    Then "worker-orcd --help" mentions "--config", "--model-path", "--worker-id", "--allow-root"

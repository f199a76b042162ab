# Spec §10: process privileges, credentials and isolation.
Feature: Privileges and credentials
  The worker runs unprivileged, reads its API token only from a protected
  file, and refuses to start when the token cannot be trusted.

  @WORKER-4900 @root
  Scenario: As root the worker refuses to start unless explicitly overridden
    Given a worker configured for the tiny test model
    And the worker is started without the root override
    Then as root the worker exits with code 2 and explains the override, otherwise it becomes ready

  @WORKER-4900 @root
  Scenario: The root override is logged as a warning
    Given a worker serving the tiny test model
    Then when running as root the worker log warns about "allow-root"

  @WORKER-4901 @root
  Scenario: Capabilities are dropped after the GPU is initialised
    Given a worker serving the tiny test model
    Then the worker process has no effective capabilities

  @WORKER-4902
  Scenario: Normal operation needs no root privileges
    Given a worker serving the tiny test model as an unprivileged user
    When I execute "Hello" with max_tokens 4
    Then the stream ends with an "end" event
    And the worker process has no effective capabilities

  @WORKER-4903 @source
  Scenario: The shipped systemd unit starts the worker unprivileged
    Given the systemd unit "deploy/worker-orcd@.service" and the AppArmor profile "deploy/apparmor/usr.local.bin.worker-orcd"
    Then the unit runs the worker as the non-root user "worker-orcd" with no capabilities and no way to gain any
    And the unit delivers the token as the systemd credential "worker-token"

  @WORKER-4921 @source
  Scenario: The shipped AppArmor profile confines the worker's file access
    Given the systemd unit "deploy/worker-orcd@.service" and the AppArmor profile "deploy/apparmor/usr.local.bin.worker-orcd"
    Then the profile is enforced and attaches to the binary the unit starts
    And under the profile the model root, the configuration and the token are readable but not writable
    And under the profile the worker may write only where the unit gives it a writable directory or device
    And the profile denies capabilities, ptrace, mount and the execution of other programs
    And the profile allows TCP over IPv4 and IPv6 and no raw sockets

  @WORKER-4910
  Scenario: A token in the environment is not accepted in place of the file
    Given a worker configured for the tiny test model
    And the token file is missing
    And the environment sets "WORKER_API_TOKEN" to "env-token-must-not-be-used"
    When the worker is started
    Then the worker exits with code 2 within 15 seconds

  @WORKER-4911 @WORKER-4990
  Scenario: WORKER_API_TOKEN_FILE names the token file
    Given a worker configured for the tiny test model
    And the configuration omits "api_token_file"
    And the environment sets "WORKER_API_TOKEN_FILE" to the token file
    When the worker is started
    Then the worker becomes ready
    When I GET "/worker/ready"
    Then the response status is 200

  @WORKER-4912
  Scenario: Under systemd the token comes from the credentials directory
    Given a worker configured for the tiny test model
    And the configuration omits "api_token_file"
    And the token file is placed as "worker-token" in a directory named by CREDENTIALS_DIRECTORY
    When the worker is started
    Then the worker becomes ready
    When I GET "/worker/ready"
    Then the response status is 200

  @WORKER-4913
  Scenario: A missing token file stops start-up at once
    Given a worker configured for the tiny test model
    And the token file is missing
    When the worker is started
    Then the worker exits with code 2 within 10 seconds
    And the worker log mentions "token"

  @WORKER-4913 @root
  Scenario: A token file the worker's user cannot reach stops start-up with advice on its ownership
    Given a worker configured for the tiny test model
    And the token file lies in a folder only root can enter
    When the worker is started as an unprivileged user
    Then the worker exits with code 2 within 10 seconds
    And the worker log mentions "cannot reach it"
    And the worker log mentions "chown worker-orcd"

  @WORKER-4913
  Scenario: An empty token file stops start-up at once
    Given a worker configured for the tiny test model
    And the token file is empty
    When the worker is started
    Then the worker exits with code 2 within 10 seconds
    And the worker log mentions "empty"

  @WORKER-4913
  Scenario: A world-readable token file stops start-up at once
    Given a worker configured for the tiny test model
    And the token file is readable by everyone
    When the worker is started
    Then the worker exits with code 2 within 10 seconds
    And the worker log mentions "chmod 600"

  @WORKER-4913
  Scenario: A group-readable token file stops start-up at once
    Given a worker configured for the tiny test model
    And the token file is readable by its group
    When the worker is started
    Then the worker exits with code 2 within 10 seconds

  @WORKER-4920 @source
  Scenario: Container isolation is documented
    Then the file "docs/operations.md" mentions "container"

  @WORKER-4922
  Scenario: A worker cannot read model files outside its own model root
    Given a worker serving the tiny test model
    And another worker's model directory beside this worker's model root
    When I plan the other worker's model by its path
    Then the request is refused with a client error naming the model root

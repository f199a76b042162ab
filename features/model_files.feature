Feature: Model files that change under the worker, and Plans that cost almost nothing
  Operators copy, truncate and overwrite model files while a worker runs.
  The worker reads model files with plain reads and never maps them, so no
  change can kill it with SIGBUS. A Plan or Commit that sees its file
  change while reading it fails with MODEL_FILE_CHANGED (retriable) and
  changes nothing; what the worker already serves stays what it sealed.
  Plan keeps what it read about a file under the file's identity (device,
  inode, size and modification time), so a Plan of an unchanged file reads nothing, and
  it reads one new file at a time (issue 13 points 2 and 3).

  @WORKER-4314 @WORKER-4224
  Scenario: A model file truncated while Plan reads it fails that Plan and the worker keeps serving
    Given reads of model files named "victim.gguf" pause for 1500 ms after their first block
    And a worker serving the tiny test model
    And a byte-identical copy of the served model named "victim.gguf" in the model root
    When I plan "victim.gguf" and it is truncated to half its size while the worker reads it
    Then the response status is 409
    And the error code is "MODEL_FILE_CHANGED"
    And the error is retriable with a retry_after_ms
    And the ready answer still shows the sealed shard
    When I execute "Once upon a time" with max_tokens 4
    Then the stream ends with an "end" event

  @WORKER-4314 @WORKER-4224
  Scenario: A model file overwritten in place while Plan reads it fails that Plan
    Given reads of model files named "victim.gguf" pause for 1500 ms after their first block
    And a worker serving the tiny test model
    And a byte-identical copy of the served model named "victim.gguf" in the model root
    When I plan "victim.gguf" and it is overwritten in place with other bytes while the worker reads it
    Then the response status is 409
    And the error code is "MODEL_FILE_CHANGED"
    And the ready answer still shows the sealed shard

  @WORKER-4314 @WORKER-4223
  Scenario: A model file copied over while Commit reads it fails that Commit and changes nothing
    Given reads of model files named "victim.gguf" pause for 1500 ms after their first block
    And a worker serving the tiny test model
    And a byte-identical copy of the served model named "victim.gguf" in the model root
    When I GET "/worker/ready"
    And I remember the shard handle
    And I commit as shard "victim-shard" "victim.gguf" and it is replaced by copying other bytes over it while the worker reads it
    Then the response status is 409
    And the error code is "MODEL_FILE_CHANGED"
    And the worker still serves the remembered shard handle

  # The resident copy and its digest are the authority: once loaded, the
  # file is never read again, whatever happens to it.
  @WORKER-4113 @WORKER-4314
  Scenario: The served model file truncated and overwritten during a job changes nothing that is served
    Given a worker configured for the tiny test model
    And the served model file is a copy of its own, shared with no other scenario
    When the worker is started
    And I execute "Once upon a time" with max_tokens 12
    And I remember the tokens of that stream
    And I start executing "Once upon a time" with max_tokens 12
    And the served model file is truncated to half its size
    And I wait for the stream to finish
    Then the token stream equals the remembered one
    When the served model file is replaced by copying other bytes over it
    And I execute "Once upon a time" with max_tokens 12
    Then the token stream equals the remembered one
    And the ready answer still shows the sealed shard
    And the worker process is still running

  @WORKER-4210 @WORKER-4314
  Scenario: A Plan of a file already read reads nothing, and a changed file is read again
    Given a worker serving the tiny test model
    And a byte-identical copy of the served model named "copy.gguf" in the model root
    When I read the metrics
    And I plan the tiny test model
    Then the response status is 200
    And the metric "worker_orcd_model_file_scans_total" is unchanged
    When I plan "copy.gguf"
    And I plan "copy.gguf"
    Then the response status is 200
    And the metric "worker_orcd_model_file_scans_total" increased by 1
    When I read the metrics
    And the file "copy.gguf" in the model root is touched
    And I plan "copy.gguf"
    Then the response status is 200
    And the metric "worker_orcd_model_file_scans_total" increased by 1

  @WORKER-4210
  Scenario: One new file is read at a time; other new files wait, files already read do not
    Given reads of model files named "slow.gguf" pause for 3000 ms after their first block
    And a worker serving the tiny test model
    And a byte-identical copy of the served model named "slow.gguf" in the model root
    And a byte-identical copy of the served model named "other.gguf" in the model root
    When I plan "slow.gguf", and while the worker reads it I plan "other.gguf" and then the served model
    Then the Plan of "other.gguf" was refused with 429 "WORKER_BUSY" and a retry_after_ms
    And the Plan of the served model answered 200 before the Plan of "slow.gguf" did
    And the Plan of "slow.gguf" answered 200 and is feasible

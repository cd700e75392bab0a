"""rmqd.store: RocketMQ 4.x on-disk formats and the code that reads, writes and recovers them.

Store directory (storePathRootDir, default ~/store; SPEC section 3):

  {store}/
    commitlog/
      00000000000000000000          every message, appended; files of mappedFileSizeCommitLog bytes
      00000000001073741824          (1 GiB), named by the phy_offset of their first byte (20 digits)
    consumequeue/
      {topic}/{queue_id}/
        00000000000000000000        20-byte units (phy_offset i64, size i32, tags_hash i64), files of
        00000000000006000000        300,000 units, named by the byte offset of their first unit
    index/
      20240101120000000             IndexFile per yyyyMMddHHmmssSSS of creation: 40-byte header,
                                    hash slots, 20-byte entries (key = topic#key, Java hashCode)
    checkpoint                      4 KiB: RocketMQ flush timestamps + rmqd positions (checkpoint.py)
    abort                           exists while a broker runs; found at start = abnormal recovery
    lock                            flock'ed by the running broker; holds its pid
    config/
      topics.json subscriptionGroup.json consumerOffset.json delayOffset.json (+ .bak each)

Names: a file is named after the offset of its first byte, zero-padded to 20 digits
(filenames.py); files are always full-size (CommitLog: preallocated and warmed; ConsumeQueue:
sparse), so unwritten space reads as zeros and an all-zero record/unit ends the valid data.
Temporary files are `{name}.{pid}.tmp` and are never mapped.

Modules (one format per module, each with its byte diagram):
  record.py             CommitLog record codec (pure; shared with the SDK)
  filenames.py          20-digit names
  mapped_file.py        one full-size mmap'ed file: create (fallocate, warm, atomic publish), flush
  mapped_file_queue.py  the ordered files of one directory
  commit_log.py         append / read / recover the CommitLog
  consume_queue.py      ConsumeQueue units, ConsumeQueueStore (bounded number of open queues)
  dispatch.py           the one definition of the ConsumeQueue unit of a record
  index_file.py         IndexFile and IndexService (query by message key)
  checkpoint.py         the checkpoint file
  files.py              lock, abort marker, atomic JSON (+ .bak)
  recovery.py           recover_store(): torn tails, ConsumeQueue rebuild, checkpoint
"""

// Real Node peers for the portfolio plugin's tests and benchmark.
//
//   node peer.js add QUEUE            < [{name, data, opts}]   -> [ids]
//   node peer.js counts QUEUE                                  -> getJobCounts()
//   node peer.js workers QUEUE                                 -> getWorkers() names
//   node peer.js work QUEUE CONCURRENCY COUNT                  -> {seconds} once COUNT jobs completed
//   node peer.js compile                < solidity source      -> {abi, bytecode}
//
// Redis is REDIS_URL (default redis://127.0.0.1:6379/0; a cluster as
// redis+cluster://host:port[,host:port...], through ioredis' Cluster, as a
// producer on a cluster connects); BULL_PREFIX sets the key prefix ({bull} on a cluster).
'use strict';

const fs = require('fs');

function connection() {
  const raw = process.env.REDIS_URL || 'redis://127.0.0.1:6379/0';
  if (raw.startsWith('redis+cluster://')) {
    const { Cluster } = require('ioredis');
    const nodes = raw.slice('redis+cluster://'.length).split('/')[0].split(',').map((node) => {
      const at = node.lastIndexOf(':');
      return { host: node.slice(0, at), port: Number(node.slice(at + 1)) };
    });
    return new Cluster(nodes, { redisOptions: { maxRetriesPerRequest: null } });
  }
  const url = new URL(raw);
  return {
    host: url.hostname,
    port: Number(url.port || 6379),
    db: Number((url.pathname || '/0').slice(1) || 0),
    maxRetriesPerRequest: null,
  };
}

function opts() {
  return { connection: connection(), prefix: process.env.BULL_PREFIX || 'bull' };
}

function stdinJSON() {
  return JSON.parse(fs.readFileSync(0, 'utf8'));
}

async function main() {
  const [cmd, queueName, ...rest] = process.argv.slice(2);
  if (cmd === 'compile') {
    const solc = require('solc');
    const source = fs.readFileSync(0, 'utf8');
    const input = {
      language: 'Solidity',
      sources: { 'Token.sol': { content: source } },
      // ganache 7.9 runs the shanghai hardfork: no cancun opcodes (MCOPY, TSTORE).
      settings: { evmVersion: 'shanghai', outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object'] } } },
    };
    const output = JSON.parse(solc.compile(JSON.stringify(input)));
    const errors = (output.errors || []).filter((e) => e.severity === 'error');
    if (errors.length) throw new Error(errors.map((e) => e.formattedMessage).join('\n'));
    const [name] = Object.keys(output.contracts['Token.sol']);
    const c = output.contracts['Token.sol'][name];
    process.stdout.write(JSON.stringify({ name, abi: c.abi, bytecode: c.evm.bytecode.object }));
    return;
  }
  const { Queue, Worker } = require('bullmq');
  if (cmd === 'add') {
    const queue = new Queue(queueName, opts());
    const jobs = await queue.addBulk(stdinJSON());
    process.stdout.write(JSON.stringify(jobs.map((j) => j.id)));
    await queue.close();
  } else if (cmd === 'counts') {
    const queue = new Queue(queueName, opts());
    process.stdout.write(JSON.stringify(await queue.getJobCounts()));
    await queue.close();
  } else if (cmd === 'workers') {
    const queue = new Queue(queueName, opts());
    const workers = await queue.getWorkers();
    process.stdout.write(JSON.stringify(workers.map((w) => w.rawname || w.name)));
    await queue.close();
  } else if (cmd === 'work') {
    const concurrency = Number(rest[0] || 10);
    const count = Number(rest[1] || 1000);
    let done = 0;
    let started = null;
    let finish;
    const finished = new Promise((resolve) => { finish = resolve; });
    const worker = new Worker(queueName, async () => {
      if (started === null) started = process.hrtime.bigint();
      return null;
    }, { ...opts(), concurrency });
    worker.on('completed', () => {
      done += 1;
      if (done >= count) finish();
    });
    await finished;
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    await worker.close();
    process.stdout.write(JSON.stringify({ completed: done, seconds }));
  } else {
    throw new Error(`unknown command ${cmd}`);
  }
}

main().then(() => process.exit(0), (err) => {
  process.stderr.write(`${err.stack || err}\n`);
  process.exit(1);
});

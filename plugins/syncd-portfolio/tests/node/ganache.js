// A local EVM node for the tests and the benchmark: listens on an ephemeral
// loopback port and prints {"port": P, "accounts": [...]} once it answers.
'use strict';
const ganache = require('ganache');

const server = ganache.server({
  logging: { quiet: true },
  wallet: { deterministic: true, totalAccounts: 10, defaultBalance: 1000 },
  chain: { chainId: 1337 },
  miner: { instamine: 'eager' },
});
server.listen(0, '127.0.0.1', async (err) => {
  if (err) {
    process.stderr.write(`${err.stack || err}\n`);
    process.exit(1);
  }
  const accounts = await server.provider.request({ method: 'eth_accounts', params: [] });
  process.stdout.write(`${JSON.stringify({ port: server.address().port, accounts })}\n`);
});
const stop = () => server.close().finally(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

#!/usr/bin/env node
// A translation printed token by token as seqserve decodes it: seqserve.v1.Translation/Translate
// (server streaming), with @grpc/grpc-js and the repository's .proto files loaded at run time by
// @grpc/proto-loader (no generated code).
//
//   npm ci
//   node translate.js [--server localhost:50051] [--model translation] [--beam 1] [--tokens] "The file could not be opened."
//
// Without --tokens the pieces are written as they arrive, then a newline; with --tokens each token
// is one line: its id, log-probability and piece (JSON, so that its leading space shows).
"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTOS = path.resolve(__dirname, "..", "..", "protos");

function parseArgs(argv) {
  const options = { server: "localhost:50051", model: "translation", beam: 1, tokens: false, text: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--server") options.server = argv[++i];
    else if (arg === "--model") options.model = argv[++i];
    else if (arg === "--beam") options.beam = Number(argv[++i]);
    else if (arg === "--tokens") options.tokens = true;
    else options.text.push(arg);
  }
  options.text = options.text.join(" ");
  if (!options.text) {
    console.error('usage: node translate.js [--server host:port] [--model name] [--beam n] [--tokens] "text"');
    process.exit(2);
  }
  return options;
}

function main() {
  const options = parseArgs(process.argv.slice(2));
  const definition = protoLoader.loadSync("seqserve/v1/translate.proto", {
    includeDirs: [PROTOS],
    keepCase: true, // field names as in the .proto: token_id, log_prob
    longs: Number, // ModelRef.version is an int64
    defaults: true,
  });
  const seqserve = grpc.loadPackageDefinition(definition).seqserve.v1;
  const client = new seqserve.Translation(options.server, grpc.credentials.createInsecure());
  const call = client.Translate({
    model: { name: options.model },
    text: options.text,
    options: { beam: options.beam },
  });
  let first = true; // a piece's leading space starts a word: the first one has nothing before it
  call.on("data", (update) => {
    for (const token of update.tokens) {
      if (options.tokens) {
        console.log(`${token.token_id}\t${token.log_prob.toFixed(4)}\t${JSON.stringify(token.piece)}`);
      } else {
        process.stdout.write(first ? token.piece.trimStart() : token.piece);
      }
      first = false;
    }
  });
  call.on("end", () => {
    if (!options.tokens) process.stdout.write("\n");
    client.close();
  });
  call.on("error", (error) => {
    console.error(`${grpc.status[error.code]}: ${error.details}`);
    client.close();
    process.exitCode = 1;
  });
}

main();

import { InMemoryDbManager } from "../src/index.js";
import { runDbManagerContract } from "../src/testing/index.js";

runDbManagerContract({ name: "memory", create: async () => new InMemoryDbManager(), propertyRuns: 300 });

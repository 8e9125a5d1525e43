import { notInitialised, type CreditModule } from "../../core/module.js";
import { CustomerStates } from "./service.js";

/** The customer-state module (docs/customer-state.md) as a `CreditModule`, with its service once initialised. */
export interface CustomerStateModule extends CreditModule {
  /** The customer states over the core the module was given (a `ConfigurationError` before `init`). */
  states(): CustomerStates;
}

/** The customer-state module: `init` builds its service over the core's context. */
export function customerStateModule(): CustomerStateModule {
  let states: CustomerStates | undefined;
  return {
    id: "customer-state",
    init(ctx) {
      states = new CustomerStates(ctx);
    },
    states() {
      if (states === undefined) throw notInitialised("customer-state");
      return states;
    },
  };
}
